"""Data: dataset layouts, bundled sample photos, degradation (HR -> LR), shards and loaders."""
