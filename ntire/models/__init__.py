"""The networks (EDSR and MDSR exactly as the paper and the authors' released checkpoints define
them), their configs and checkpoints.

networks.py holds the table of networks by kind; network.py what each declares and the interface
(`SRNetwork`) training and inference call it through; config.py the architecture config and
presets; build.py builds one from its config. Nothing is imported here, so that the config (and
with it `ntire --help`) can be imported without torch.
"""
