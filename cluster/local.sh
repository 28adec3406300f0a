#!/usr/bin/env bash
# A private local Ray head + MLflow tracking server for spklip, stoppable without touching any other Ray on the host.
#
#   cluster/local.sh up       start both (idempotent), print the dashboard and MLflow URLs
#   cluster/local.sh down     stop exactly the processes `up` started (by PID / process group / private paths)
#   cluster/local.sh status   what is running, `ray status`, `ray job list`
#   cluster/local.sh env      print the exports a shell needs to use the cluster (eval "$(cluster/local.sh env)")
#   cluster/local.sh submit -- CMD ...   `ray job submit` CMD, run in the project root with the cluster's env
#   cluster/local.sh ui       foreground MLflow UI on the local sqlite store (no cluster needed)
#
# Why it looks like this:
# * `ray stop` kills every Ray process on the host, so it is never used. `ray start --block` runs under setsid: its
#   PID is the process group of the whole head, and it drains and stops its children on SIGTERM. Leftovers are found
#   by that group, by the private --temp-dir and by the private GCS port in their command lines, and killed by PID.
# * Non-default ports (all from SPKLIP_RAY_PORT upwards) so another Ray instance on the host can keep the defaults;
#   every one of them listens on 127.0.0.1 only (docs/cluster.md, "Loopback").
# * Token authentication stays on, with a private token file (runs/cluster/auth_token, mode 600) instead of the
#   host-wide ~/.ray/auth_token; clients get it through RAY_AUTH_MODE=token + RAY_AUTH_TOKEN_PATH.
# * MLflow: sqlite backend, proxied artifact store under runs/cluster/, loopback, one worker, no job runner
#   (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false: its huey consumers outlive a quick SIGTERM otherwise).
# * MLflow basic auth (`--app-name basic-auth`): `up` generates an admin user's random password and the Flask
#   secret key once, in runs/cluster/mlflow_credentials (mode 600, the folder 700); other users get
#   NO_PERMISSIONS. Clients get them as MLFLOW_TRACKING_USERNAME/PASSWORD from `env` (the only command that prints
#   the password), jobs from `submit`'s runtime env and from the Ray head's environment. The server runs under
#   umask 077: its sqlite stores and artifacts are the user's alone. docs/cluster.md says what remains trusted.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=$(cd "${VENV:-.venv}" && pwd)
RUN_DIR=${RUN_DIR:-runs}
mkdir -p "$RUN_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd)
DIR="$RUN_DIR/cluster"
RAY_PORT=${SPKLIP_RAY_PORT:-6479}  # GCS; the other Ray ports are RAY_PORT+1 ... +9
DASH_PORT=${SPKLIP_DASHBOARD_PORT:-8365}  # dashboard + job server
MLFLOW_PORT=${SPKLIP_MLFLOW_PORT:-5055}
UI_PORT=${SPKLIP_UI_PORT:-5056}
NCPU=$(nproc)
CPUS=${SPKLIP_CLUSTER_CPUS:-$(( NCPU > 4 ? NCPU : 4 ))}  # logical CPUs: fractional Train/Tune/Data tasks overlap
OBJ_MEM=${SPKLIP_OBJECT_STORE_BYTES:-1000000000}
TOKEN="$DIR/auth_token"
MLFLOW_CREDS="$DIR/mlflow_credentials"  # KEY=value lines: the MLflow admin's name and password, the Flask secret key
MLFLOW_USER=spklip
HOST=127.0.0.1
export PATH="$VENV/bin:$PATH"  # jobs run `python` from the PATH of `ray start`

die() { echo "cluster: $*" >&2; exit 1; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Unix socket paths under the temp dir must stay < 108 bytes; a deep project path falls back to a /tmp folder
# named after this cluster folder (recorded in ray_temp_dir, so `down` finds it).
ray_temp_dir() {
    if [ -f "$DIR/ray_temp_dir" ]; then cat "$DIR/ray_temp_dir"; return; fi
    local t="$DIR/ray"
    if [ ${#t} -gt 40 ]; then t="/tmp/spklip-ray-$(printf '%s' "$DIR" | sha1sum | cut -c1-10)"; fi
    echo "$t"
}

client_env() {  # what a client shell needs (also in $DIR/env, mode 600: it holds the MLflow password); RAY_ENABLE_...=0: see start_ray
    cat <<EOF
export RAY_ADDRESS=$HOST:$RAY_PORT
export RAY_API_SERVER_ADDRESS=http://$HOST:$DASH_PORT
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$TOKEN
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export MLFLOW_TRACKING_URI=http://$HOST:$MLFLOW_PORT
export MLFLOW_TRACKING_USERNAME=$(cred MLFLOW_TRACKING_USERNAME)
export MLFLOW_TRACKING_PASSWORD=$(cred MLFLOW_TRACKING_PASSWORD)
EOF
}

cred() { [ -f "$MLFLOW_CREDS" ] && sed -n "s/^$1=//p" "$MLFLOW_CREDS" || true; }  # one value (hex: no quoting)

mlflow_credentials() {  # once per cluster folder; a lost file means a new password, so the old user store goes too
    [ -f "$MLFLOW_CREDS" ] && return
    rm -f "$DIR/mlflow_auth.db"
    (umask 077 && python -c 'import secrets
print(f"MLFLOW_TRACKING_USERNAME='"$MLFLOW_USER"'\nMLFLOW_TRACKING_PASSWORD={secrets.token_hex(24)}\n"
      f"MLFLOW_FLASK_SERVER_SECRET_KEY={secrets.token_hex(32)}")' > "$MLFLOW_CREDS")
}

wait_http() {  # wait_http URL SECONDS PIDFILE: until the URL answers (any HTTP status) or the process dies
    local url=$1 secs=$2 pidf=$3 code
    for _ in $(seq $(( secs * 2 ))); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)
        [ "$code" != "000" ] && return 0
        alive "$pidf" || return 1
        sleep 0.5
    done
    return 1
}

start_ray() {
    local tmp; tmp=$(ray_temp_dir)
    mkdir -p "$tmp"; echo "$tmp" > "$DIR/ray_temp_dir"
    [ -f "$TOKEN" ] || (umask 077 && python -c 'import secrets; print(secrets.token_hex(32))' > "$TOKEN")
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: the node address stays 127.0.0.1 (Ray 2.60 rewrites it to the host's
    # routable one otherwise), so every Ray server listens on loopback only; it also stops `ray start --address`
    # joining this head, which a one-node cluster never needs. The autoscaler's and the dashboard's Prometheus
    # endpoints get ports of this cluster's range instead of Ray's fixed 44217/44227.
    RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$TOKEN" RAY_USAGE_STATS_ENABLED=0 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 \
    AUTOSCALER_METRIC_PORT=$((RAY_PORT + 8)) DASHBOARD_METRIC_PORT=$((RAY_PORT + 9)) \
    MLFLOW_TRACKING_URI="http://$HOST:$MLFLOW_PORT" \
    MLFLOW_TRACKING_USERNAME=$MLFLOW_USER MLFLOW_TRACKING_PASSWORD="$(cred MLFLOW_TRACKING_PASSWORD)" \
    setsid ray start --head --block --node-ip-address=$HOST --port=$RAY_PORT \
        --ray-client-server-port=$((RAY_PORT + 1)) --node-manager-port=$((RAY_PORT + 2)) \
        --object-manager-port=$((RAY_PORT + 3)) --dashboard-agent-listen-port=$((RAY_PORT + 4)) \
        --dashboard-agent-grpc-port=$((RAY_PORT + 5)) --runtime-env-agent-port=$((RAY_PORT + 6)) \
        --metrics-export-port=$((RAY_PORT + 7)) --include-dashboard=true --dashboard-host=$HOST \
        --dashboard-port=$DASH_PORT --num-cpus="$CPUS" --object-store-memory="$OBJ_MEM" \
        --temp-dir="$tmp" --disable-usage-stats >"$DIR/ray.log" 2>&1 < /dev/null &
    echo $! > "$DIR/ray.pid"
    wait_http "http://$HOST:$DASH_PORT/api/version" 90 "$DIR/ray.pid" \
        || { tail -20 "$DIR/ray.log" >&2; stop_all; die "Ray head did not come up (log: $DIR/ray.log)"; }
}

start_mlflow() {
    mkdir -p "$DIR/mlartifacts"
    chmod 700 "$DIR/mlartifacts"; chmod 600 "$DIR"/mlflow*.db 2>/dev/null || true  # made by an older local.sh
    cat > "$DIR/mlflow_auth.ini" <<EOF
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = sqlite:///$DIR/mlflow_auth.db
admin_username = $MLFLOW_USER
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
grant_default_workspace_access = false
EOF
    # the password and the secret key go by environment (readable by this user only), never on a command line
    ( umask 077
      MLFLOW_AUTH_CONFIG_PATH="$DIR/mlflow_auth.ini" MLFLOW_AUTH_ADMIN_PASSWORD="$(cred MLFLOW_TRACKING_PASSWORD)" \
      MLFLOW_FLASK_SERVER_SECRET_KEY="$(cred MLFLOW_FLASK_SERVER_SECRET_KEY)" MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
      exec setsid mlflow server --app-name basic-auth \
        --backend-store-uri "sqlite:///$DIR/mlflow.db" --artifacts-destination "$DIR/mlartifacts" \
        --host $HOST --port "$MLFLOW_PORT" --workers 1 >"$DIR/mlflow.log" 2>&1 < /dev/null ) &
    echo $! > "$DIR/mlflow.pid"
    wait_http "http://$HOST:$MLFLOW_PORT/health" 90 "$DIR/mlflow.pid" \
        || { tail -20 "$DIR/mlflow.log" >&2; stop_all; die "MLflow server did not come up (log: $DIR/mlflow.log)"; }
}

# PIDs that belong to this cluster: the process group of a PID file, plus (for Ray) anything whose command line names
# the private temp dir or the private GCS port (the Ray client server, workers that left the group).
cluster_pids() {
    local pgid=$1 tmp=${2:-} port=${3:-} snapshot
    snapshot=$(ps -eo pid=,pgid=,stat=,args=)  # taken before awk runs, so awk's own arguments never match
    awk -v g="$pgid" -v t="$tmp" -v p="${port:+:$port}" -v me=$$ '
        $1 == me || $3 ~ /^Z/ { next }  # zombies are already dead, only not yet reaped
        $2 == g || (t != "" && index($0, t)) || (p != "" && $0 ~ (p "([^0-9]|$)")) { print $1 }' <<< "$snapshot"
}

stop_one() {  # stop_one NAME [TEMP_DIR PORT]
    local name=$1 pidf="$DIR/$1.pid" pgid pids
    [ -f "$pidf" ] || return 0
    pgid=$(cat "$pidf")
    kill -TERM -- "-$pgid" 2>/dev/null || true
    for _ in $(seq 20); do  # raylet and workers stop on SIGTERM; gcs_server, monitor and `ray start` ignore it
        pids=$(cluster_pids "$pgid" "${2:-}" "${3:-}")
        [ -z "$pids" ] && break
        sleep 0.5
    done
    pids=$(cluster_pids "$pgid" "${2:-}" "${3:-}")
    if [ -n "$pids" ]; then
        echo "cluster: $name: killing $(echo $pids | wc -w) leftover process(es) by PID" >&2
        kill -KILL $pids 2>/dev/null || true
        sleep 1
    fi
    pids=$(cluster_pids "$pgid" "${2:-}" "${3:-}")
    [ -z "$pids" ] || die "$name: processes still running: $pids"
    rm -f "$pidf"
    echo "cluster: $name stopped"
}

stop_all() {
    stop_one mlflow
    local tmp=""; [ -f "$DIR/ray_temp_dir" ] && tmp=$(cat "$DIR/ray_temp_dir")
    stop_one ray "$tmp" "$RAY_PORT"
    [ -n "$tmp" ] && [ "$tmp" != "$DIR/ray" ] && rm -rf "$tmp"  # the /tmp fallback only; logs under runs/ stay
    rm -f "$DIR/ray_temp_dir" "$DIR/env" "$DIR/job_runtime_env.json"
}

cmd_up() {
    mkdir -p "$DIR"
    chmod 700 "$DIR"  # tokens, MLflow credentials and stores, logs: this user's alone
    if alive "$DIR/ray.pid" && alive "$DIR/mlflow.pid"; then
        echo "cluster: already running"; print_urls; print_paste_line; return
    fi
    stop_all >/dev/null  # half-started leftovers from a crash
    mlflow_credentials  # before Ray: its jobs inherit them
    start_ray
    start_mlflow
    (umask 077 && client_env > "$DIR/env")
    print_urls
    print_paste_line
}

print_paste_line() {  # the last line of `up`: what a shell needs before `ray job submit -- python sweeps/...`
    echo
    echo "Paste this into your shell, then \`ray job submit -- python sweeps/hsfe_ablation.py --smoke-test\` works:"
    echo "eval \"\$(cluster/local.sh env)\""
}

print_urls() {
    echo "Ray dashboard + job server: http://$HOST:$DASH_PORT   (GCS $HOST:$RAY_PORT, token in $TOKEN)"
    echo "MLflow tracking server:     http://$HOST:$MLFLOW_PORT   (basic auth, credentials in $MLFLOW_CREDS)"
    echo "Use it from a shell:        eval \"\$(cluster/local.sh env)\""
    echo "Submit a sweep:             cluster/local.sh submit -- python sweeps/hsfe_ablation.py --smoke-test"
}

cmd_status() {
    local name
    for name in ray mlflow; do
        if alive "$DIR/$name.pid"; then echo "$name: running (pid $(cat "$DIR/$name.pid"))"; else echo "$name: stopped"; fi
    done
    alive "$DIR/ray.pid" || return 0
    print_urls
    eval "$(client_env)"
    ray status --address "$RAY_ADDRESS" || true
    ray job list --address "$RAY_API_SERVER_ADDRESS" || true
}

cmd_submit() {
    [ "${1:-}" = "--" ] && shift
    [ $# -gt 0 ] || die "usage: cluster/local.sh submit -- python sweeps/hsfe_ablation.py --smoke-test"
    alive "$DIR/ray.pid" || die "no cluster running; run 'make cluster-up' first"
    eval "$(client_env)"
    # The MLflow credentials go in a file (mode 600), not on `ray job submit`'s command line, which any local
    # user can read in ps.
    local runtime_env="$DIR/job_runtime_env.json"
    (umask 077 && cat > "$runtime_env" <<EOF
{"env_vars": {"MLFLOW_TRACKING_URI": "$MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME": "$MLFLOW_TRACKING_USERNAME",
 "MLFLOW_TRACKING_PASSWORD": "$MLFLOW_TRACKING_PASSWORD", "HF_HUB_OFFLINE": "1"}}
EOF
)
    # A local cluster shares this file system: the job runs in the project root (relative paths such as
    # runs/data/... then mean the same thing as in a shell) instead of in an uploaded copy of the tree.
    ray job submit --address "$RAY_API_SERVER_ADDRESS" --runtime-env "$runtime_env" \
        -- bash -c 'cd "$0" && exec "$@"' "$ROOT" "$@"  # the CLI shell-quotes each argument (shlex.join)
}

cmd_ui() {
    local db="${MLFLOW_DB:-$RUN_DIR/mlflow.db}"
    [ -f "$db" ] || die "no MLflow store at $db yet (run 'make demo' or a sweep first)"
    echo "MLflow UI on http://$HOST:$UI_PORT (store $db, no login: loopback only, docs/cluster.md); Ctrl-C stops it"
    echo "(an experiment's runs table: http://$HOST:$UI_PORT/#/experiments/<id>?workflowType=machine_learning)"
    # `mlflow ui` forwards SIGTERM/SIGINT to its uvicorn child, whose graceful shutdown waits for every open
    # response to finish: a browser tab that stalls mid-download (an artifact, an event stream) kept it up until
    # SIGKILL. Uvicorn's own bound cancels what is still running after 3 s, so SIGTERM stops the UI cleanly.
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false exec mlflow ui --backend-store-uri "sqlite:///$db" \
        --host $HOST --port "$UI_PORT" --workers 1 --uvicorn-opts "--timeout-graceful-shutdown 3"
}

case "${1:-}" in
    up) cmd_up ;;
    down) stop_all ;;
    status) cmd_status ;;
    env) client_env ;;
    submit) shift; cmd_submit "$@" ;;
    ui) cmd_ui ;;
    *) die "usage: cluster/local.sh up|down|status|env|submit -- CMD...|ui" ;;
esac
