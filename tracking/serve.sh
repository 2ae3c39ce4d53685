#!/usr/bin/env bash
# Start an MLflow tracking server for a team: runs in a SQLite file (or PostgreSQL), artifacts in a
# folder (or bucket) that the server itself reads and writes, so clients need only HTTP access.
# Listens on 127.0.0.1 unless told otherwise. See tracking/README.md.
#
#   tracking/serve.sh                                   # 127.0.0.1:5000, data in tracking/data/
#   tracking/serve.sh --host 0.0.0.0 --allowed-hosts mlflow.lab.example,10.0.0.7:5000
#   tracking/serve.sh --backend postgresql://mlflow@db.lab/mlflow --artifacts s3://bucket/mlflow
#   tracking/serve.sh --auth                            # user accounts (basic auth)
#
# Then, on the training machines: export MLFLOW_TRACKING_URI=http://<host>:<port>
# The script `exec`s mlflow: its PID is the server's, and killing it stops the workers too.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"

host="${NTIRE_MLFLOW_HOST:-127.0.0.1}"
port="${NTIRE_MLFLOW_PORT:-5000}"
data="$here/data"
backend=""
artifacts=""
workers=2
auth=0
allowed_hosts=""
print_only=0
extra=()

usage() {
    cat <<'EOF'
usage: tracking/serve.sh [options] [-- extra `mlflow server` options]

  --host HOST           interface to listen on (default 127.0.0.1; 0.0.0.0 for every interface)
  --port PORT           port (default 5000)
  --data DIR            folder for the default SQLite store and artifacts (default tracking/data)
  --backend URI         run store: sqlite:////abs/path.db or postgresql://user:pass@host/db
                        (default sqlite:////<DIR>/mlflow.db)
  --artifacts DIR|URI   where the server keeps artifacts: a folder, s3://..., gs://...
                        (default <DIR>/artifacts)
  --workers N           server worker processes (default 2)
  --allowed-hosts LIST  Host headers to accept, comma-separated (needed when clients reach the
                        server by a name or public address; default: localhost and private IPs)
  --auth                require a user name and password (MLflow basic auth; see README.md)
  --print-command       print the mlflow command instead of running it
  -h, --help            this help
EOF
}

need_value() {
    if [[ $# -lt 2 || -z "$2" ]]; then
        echo "tracking/serve.sh: $1 needs a value" >&2
        exit 2
    fi
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --host) need_value "$@"; host="$2"; shift 2 ;;
        --port) need_value "$@"; port="$2"; shift 2 ;;
        --data) need_value "$@"; data="$2"; shift 2 ;;
        --backend) need_value "$@"; backend="$2"; shift 2 ;;
        --artifacts) need_value "$@"; artifacts="$2"; shift 2 ;;
        --workers) need_value "$@"; workers="$2"; shift 2 ;;
        --allowed-hosts) need_value "$@"; allowed_hosts="$2"; shift 2 ;;
        --auth) auth=1; shift ;;
        --print-command) print_only=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "tracking/serve.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

if ! [[ "$port" =~ ^[0-9]+$ ]] || (( port < 1 || port > 65535 )); then
    echo "tracking/serve.sh: --port must be a number in 1-65535, got '$port'" >&2
    exit 2
fi
if ! [[ "$workers" =~ ^[0-9]+$ ]] || (( workers < 1 )); then
    echo "tracking/serve.sh: --workers must be a positive number, got '$workers'" >&2
    exit 2
fi

mkdir -p "$data"
data="$(cd "$data" && pwd)"  # absolute: sqlite:/// with a relative path depends on the cwd
# SQLite URIs need four slashes for an absolute path (sqlite:///rel.db is relative to the cwd).
backend="${backend:-sqlite:///$data/mlflow.db}"
artifacts="${artifacts:-$data/artifacts}"
if [[ "$artifacts" != *://* ]]; then
    mkdir -p "$artifacts"
    artifacts="$(cd "$artifacts" && pwd)"
fi

if [[ -n "${MLFLOW:-}" ]]; then
    mlflow_bin="$MLFLOW"
elif [[ -x "$repo/.venv/bin/mlflow" ]]; then
    mlflow_bin="$repo/.venv/bin/mlflow"
else
    mlflow_bin="mlflow"
fi

cmd=("$mlflow_bin" server
     --host "$host" --port "$port" --workers "$workers"
     --backend-store-uri "$backend"
     --serve-artifacts --artifacts-destination "$artifacts")
if [[ -n "$allowed_hosts" ]]; then
    cmd+=(--allowed-hosts "$allowed_hosts")
fi

if (( auth )); then
    cmd+=(--app-name basic-auth)
fi
cmd+=("${extra[@]}")

if (( print_only )); then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
fi

if (( auth )); then
    if [[ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]]; then
        echo "tracking/serve.sh: --auth needs MLFLOW_FLASK_SERVER_SECRET_KEY (e.g. \$(openssl rand -hex 32)), the" >&2
        echo "same on every restart, so that sessions stay valid" >&2
        exit 2
    fi
    # Basic auth keeps its users in a database of its own; put it beside the runs, not in the cwd.
    if [[ -z "${MLFLOW_AUTH_CONFIG_PATH:-}" ]]; then
        export MLFLOW_AUTH_CONFIG_PATH="$data/basic_auth.ini"
        if [[ ! -f "$MLFLOW_AUTH_CONFIG_PATH" ]]; then
            cat > "$MLFLOW_AUTH_CONFIG_PATH" <<EOF
[mlflow]
default_permission = READ
database_uri = sqlite:///$data/basic_auth.db
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
EOF
        fi
    fi
    python_bin="$(dirname "$mlflow_bin")/python"
    [[ -x "$python_bin" ]] || python_bin=python3
    "$python_bin" -c "import flask_wtf" 2>/dev/null || {
        echo "tracking/serve.sh: --auth needs MLflow's auth extra: pip install 'mlflow[auth]'" >&2
        exit 2
    }
fi

case "$host" in
    127.*|localhost|::1) ;;
    *) echo "tracking/serve.sh: listening on $host:$port: reachable from other machines$( ((auth)) || echo ', WITHOUT authentication (add --auth)')" >&2 ;;
esac
# MLflow 3 also starts a job runner with seven worker processes for its GenAI features (scorers,
# trace roll-ups), which training runs never use; they cost memory and start-up time, and they
# outlive a kill of the server's PID. Set MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true to have them.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
# Never echo a database password.
echo "tracking/serve.sh: runs in $(sed -E 's#//([^:/@]+):[^@]*@#//\1:***@#' <<<"$backend"), artifacts in $artifacts" >&2
exec "${cmd[@]}"
