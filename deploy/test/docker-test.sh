#!/usr/bin/env bash
# The docker test: builds the image and runs the compose stack for real, on a Docker engine that
# this script starts (and stops) itself, then checks it through HTTP on loopback ports.
#
#   1. installs what it needs when missing (Debian: docker.io, docker-compose, debootstrap,
#      prometheus, dataset-fashion-mnist)
#   2. starts its own dockerd (temporary data root and socket; the machine's engine, if any, is
#      left alone) and builds stand-ins for the base and Prometheus images, which cannot be pulled
#   3. builds the api image through docker-compose with the local torch CPU wheel and a
#      pre-made checkpoint as build arguments (no training inside the build)
#   4. `docker-compose up` of api (2 replicas) + nginx + prometheus; waits for healthy; POSTs
#      real Fashion-MNIST images through nginx and compares the answers with the checkpoint
#      evaluated here; checks /v1/model; asks Prometheus for convserve_requests_total from the
#      api targets, evaluates every dashboard query and checks the alerting rules loaded
#   4b. through nginx (deploy/test/docker_scale.py): load at concurrency 16 reaches both
#      replicas (their own counters, via Prometheus); an 11 MiB POST gets a JSON 413; a replica
#      stopped under load and replaced (nginx reloads), then both replaced one at a time, each
#      under steady load, counting every answer (only 200, or 503 with Retry-After, pass)
#   5. serves a mounted checkpoint (API_MODEL_PATH under /models) instead of the baked one,
#      and measures requests/s through nginx with this 1 replica
#   6. stops an api container with SIGTERM and checks it exits cleanly
#   7. `docker-compose down -v`, stops the engine, removes everything it made (also on failure)
#
# Usage: deploy/test/docker-test.sh
# Env:
#   PYTHON                 Python with the project installed (default .venv/bin/python)
#   DOCKER_TEST_CHECKPOINT checkpoint to bake in (default checkpoints/model.pt when present,
#                          else a 1-epoch model trained here)
#   DOCKER_TEST_TRAIN_IN_BUILD=1  supply no checkpoint: the build trains one (with
#                          DOCKER_TEST_TRAIN_ARGS, e.g. "--epochs 1"); minutes longer
#   DOCKER_TEST_CACHE      folder caching the debootstrap tarball (default deploy/.cache;
#                          empty: no cache)
#   DOCKER_TEST_LOGS       where the logs of the last run are kept (engine, build, compose,
#                          checks; default deploy/.cache/last-run; empty: not kept)
#   CI                     when "true", a machine that cannot start an engine fails the test;
#                          otherwise it is skipped with a message
# Last line: "docker-test: N passed, N failed".
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
PYTHON="${PYTHON:-$root/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
CACHE="${DOCKER_TEST_CACHE-$root/deploy/.cache}"
LOGS="${DOCKER_TEST_LOGS-$root/deploy/.cache/last-run}"
DATASET=/usr/share/datasets/fashion-mnist
DOCKER=/usr/bin/docker # Debian's docker.io client (20.10), matching the engine started here
PACKAGES=(docker.io docker-compose debootstrap prometheus dataset-fashion-mnist)
passed=0
failed=0
t_start=$(date +%s)

log() { printf '[docker-test %s +%ss] %s\n' "$(date +%H:%M:%S)" "$(($(date +%s) - t_start))" "$*" >&2; }
pass() { passed=$((passed + 1)); echo "PASS $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
finished=0
finish() {
  [ "$finished" -eq 1 ] || echo "docker-test: $passed passed, $failed failed"
  finished=1
  [ "$failed" -eq 0 ]
}
skip_or_fail() {
  if [ "${CI:-}" = "true" ]; then
    fail "engine: $*"
    finish
    exit 1
  fi
  echo "docker-test: SKIPPED: $*"
  exit 0
}

# --- 1. prerequisites ---------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || skip_or_fail "needs root to start a Docker engine"
command -v apt-get >/dev/null || skip_or_fail "needs Debian's apt-get to install the engine"
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 300 apt-get update -q >/dev/null
  timeout 600 apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
for tool in dockerd "$DOCKER" docker-compose debootstrap promtool prometheus; do
  command -v "$tool" >/dev/null || skip_or_fail "$tool is not installed"
done

# One run at a time on a machine: a second engine would fight over the docker0 bridge.
exec 9>/tmp/convserve-docker-test.lock
flock -w 600 9 || { fail "lock: another docker test held /tmp/convserve-docker-test.lock for 10 minutes"; finish; exit 1; }

work="$(mktemp -d /tmp/convserve-docker-test.XXXXXX)"
project="convservetest$$"
wheel_copy=""
model_copy=""
dockerd_pid=""
export DOCKER_HOST="unix://$work/docker.sock"
export DOCKER_CONFIG="$work/client-config" # no credential helpers or contexts of the machine
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0 # classic builder: buildx is not here
export COMPOSE_PROJECT_NAME="$project" COMPOSE_HTTP_TIMEOUT=120
mkdir -p "$DOCKER_CONFIG"

stamp() { while IFS= read -r line; do printf '%s %s\n' "$(date +%T)" "$line"; done; }
compose() { timeout "${COMPOSE_TIMEOUT:-300}" docker-compose -f "$root/docker-compose.yml" "$@"; }

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [ -n "$dockerd_pid" ] && kill -0 "$dockerd_pid" 2>/dev/null; then
    if [ "$failed" -gt 0 ] || [ "$rc" -ne 0 ]; then
      log "api logs (last 40 lines):"
      COMPOSE_TIMEOUT=30 compose logs --no-color --tail=40 api 2>&1 | sed 's/^/    /' >&2
    fi
    COMPOSE_TIMEOUT=90 compose down -v --remove-orphans -t 5 >/dev/null 2>&1
    log "compose down done"
    kill -TERM "$dockerd_pid" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$dockerd_pid" 2>/dev/null
    log "dockerd stopped"
    # The containerd that this dockerd started, should it outlive it.
    if [ -f "$work/exec/containerd/containerd.pid" ]; then
      kill -KILL "$(cat "$work/exec/containerd/containerd.pid")" 2>/dev/null
    fi
  fi
  # Mounts the engine may have left below the work folder (overlays, netns, shm).
  grep -o " ${work}[^ ]*" /proc/mounts 2>/dev/null | sort -r | while read -r mnt; do
    umount -l "$mnt" 2>/dev/null
  done
  if [ -n "$LOGS" ]; then
    rm -rf "$LOGS" && mkdir -p "$LOGS" && cp "$work"/*.log "$LOGS/" 2>/dev/null
  fi
  rm -rf --one-file-system "$work"
  [ -n "$wheel_copy" ] && rm -f "$wheel_copy"
  [ -n "$model_copy" ] && rm -f "$model_copy"
  log "cleaned up (engine stopped, $work removed); total $(($(date +%s) - t_start))s"
  [ "$rc" -eq 0 ] || [ "$failed" -gt 0 ] || { failed=$((failed + 1)); echo "FAIL harness: exited with status $rc"; }
  finish
  exit $((rc != 0 || failed > 0))
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 2. engine and stand-in images -----------------------------------------------------------
# The engine's data root on a tmpfs: layers are written and thrown away within minutes, and on a
# disk the final delete of a few GB of small files alone takes minutes on this machine.
mkdir -p "$work/root"
if mount -t tmpfs -o "size=${DOCKER_TEST_TMPFS_SIZE:-12g},mode=0710" convserve-docker-test "$work/root"; then
  data_root_fs=tmpfs
else
  data_root_fs=disk
fi
log "starting dockerd (data root $work/root on $data_root_fs)"
dockerd --data-root "$work/root" --exec-root "$work/exec" --pidfile "$work/dockerd.pid" \
  -H "$DOCKER_HOST" >"$work/dockerd.log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 120); do
  "$DOCKER" version >/dev/null 2>&1 && break
  kill -0 "$dockerd_pid" 2>/dev/null || break
  sleep 0.5
done
if ! "$DOCKER" version >/dev/null 2>&1; then
  tail -n 20 "$work/dockerd.log" >&2
  skip_or_fail "dockerd did not start within 60 s"
fi
pass "engine: dockerd $("$DOCKER" version --format '{{.Server.Version}}') up"

t0=$(date +%s)
DOCKER="$DOCKER" STANDIN_CACHE="$CACHE" timeout 420 "$root/deploy/test/standin-images.sh"
log "stand-in images in $(($(date +%s) - t0))s"

# --- 3. build inputs: the torch CPU wheel and a checkpoint -------------------------------------
"$PYTHON" -m pip download -q torch==2.13.0 --no-deps -d "$work/wheels" >/dev/null
wheel="$(find "$work/wheels" -name 'torch-2.13.0*.whl' -printf '%f\n' | head -n1)"
case "$wheel" in *+cpu*) ;; *) log "warning: $wheel is not a CPU build" ;; esac
wheel_copy="$root/deploy/docker/wheels/$wheel"
[ -e "$wheel_copy" ] && wheel_copy="" # the user's own copy: use it, leave it
[ -z "$wheel_copy" ] || ln "$work/wheels/$wheel" "$wheel_copy" 2>/dev/null || cp "$work/wheels/$wheel" "$wheel_copy"

checkpoint="${DOCKER_TEST_CHECKPOINT:-}"
if [ "${DOCKER_TEST_TRAIN_IN_BUILD:-}" = 1 ]; then
  checkpoint=""
  log "DOCKER_TEST_TRAIN_IN_BUILD=1: the build trains its model (TRAIN_ARGS='${DOCKER_TEST_TRAIN_ARGS:-}')"
else
  if [ -z "$checkpoint" ] && [ -s "$root/checkpoints/model.pt" ]; then checkpoint="$root/checkpoints/model.pt"; fi
  if [ -z "$checkpoint" ]; then
    log "no checkpoint given: training a quick one (6000 images, 1 epoch)"
    accuracy="$(timeout 300 "$PYTHON" "$root/deploy/test/docker_smoke.py" quick-checkpoint "$work/quick.pt")"
    log "quick checkpoint: held-out accuracy $accuracy"
    checkpoint="$work/quick.pt"
  fi
  # A snapshot: checkpoints/model.pt may be rewritten (make train, hot-reload tests) meanwhile.
  cp "$checkpoint" "$work/supplied.pt"
  checkpoint="$work/supplied.pt"
  model_copy="$root/deploy/docker/model/docker-test-$$.pt"
  cp "$checkpoint" "$model_copy"
fi

# --- 3b. build -----------------------------------------------------------------------------------
log "building the api image (classic builder, TORCH_WHEEL=$wheel, CHECKPOINT=$(basename "${model_copy:-}"))"
t0=$(date +%s)
if API_TORCH_WHEEL="$wheel" API_CHECKPOINT="$(basename "${model_copy:-}")" \
  API_TRAIN_ARGS="${DOCKER_TEST_TRAIN_ARGS:-}" COMPOSE_TIMEOUT=600 \
  compose build api 2>&1 | stamp >"$work/build.log"; then
  build_s=$(($(date +%s) - t0))
  size_mb=$(($("$DOCKER" image inspect convserve:latest --format '{{.Size}}') / 1000000))
  pass "build: convserve:latest in ${build_s}s, ${size_mb} MB"
else
  tail -n 40 "$work/build.log" >&2
  fail "build: docker-compose build api failed"
  exit 1
fi
# Only now is the checkpoint copy in the image; drop it from the build context.
[ -z "$model_copy" ] || rm -f "$model_copy"
model_copy=""

# The checkpoint baked into the image: what the answers are checked against.
cid="$("$DOCKER" create convserve:latest)"
"$DOCKER" cp "$cid:/opt/convserve/model/model.pt" "$work/baked.pt"
"$DOCKER" rm "$cid" >/dev/null
if [ -z "$checkpoint" ]; then
  pass "model: the build trained and baked in a checkpoint ($(stat -c %s "$work/baked.pt") bytes)"
elif cmp -s "$checkpoint" "$work/baked.pt"; then
  pass "model: the image holds the supplied checkpoint byte for byte"
else
  fail "model: the image's checkpoint differs from the one supplied"
fi

user="$("$DOCKER" image inspect convserve:latest --format '{{.Config.User}}')"
# shellcheck disable=SC2016 # expanded by the container's shell
compilers="$(timeout 60 "$DOCKER" run --rm --entrypoint /bin/sh convserve:latest -c \
  'for c in gcc cc g++ c++ clang make; do command -v "$c"; done; echo end')"
if [ -n "$user" ] && [ "${user%%:*}" != "0" ] && [ "${user%%:*}" != "root" ] && [ "$compilers" = end ]; then
  pass "image: runs as user $user, no compiler inside"
else
  fail "image: user '$user', compilers: ${compilers%end}"
fi

# --- 4. the stack ----------------------------------------------------------------------------------
log "docker-compose up: api x2 + nginx + prometheus (grafana has no stand-in; its files are checked statically)"
# The same settings for every compose call below, so that scaling never recreates a container.
export API_PORT="" PROMETHEUS_PORT="" API_WORKERS=1 API_MODEL_DIR="$work/mounted"
mkdir -p "$work/mounted"
t0=$(date +%s)
# nginx waits for healthy replicas (depends_on: service_healthy), so this returns once they are.
compose up -d --no-build --scale api=2 api prometheus nginx >"$work/up.log" 2>&1 \
  || { cat "$work/up.log" >&2; fail "compose up"; exit 1; }
nginx_url="http://127.0.0.1:$(compose port nginx 8000 | sed 's/.*://')"
prom_url="http://127.0.0.1:$(compose port prometheus 9090 | sed 's/.*://')"
ready_s="$("$PYTHON" "$root/deploy/test/docker_smoke.py" wait-ready "$nginx_url" --timeout 120)" \
  || { fail "ready: $nginx_url/readyz (nginx) not 200 within 120 s"; exit 1; }
cold_s="$(($(date +%s) - t0))"
pass "ready: /readyz 200 through nginx ${cold_s}s after compose up (${ready_s}s of polling)"

api_ids() { compose ps -q api | sort; }
health() { "$DOCKER" inspect --format '{{.State.Health.Status}}' "$1" 2>/dev/null; }
wait_healthy() { # ID SECONDS
  for _ in $(seq "$2"); do [ "$(health "$1")" = healthy ] && return 0; sleep 1; done
  return 1
}
healthy=0
for id in $(api_ids); do wait_healthy "$id" 60 && healthy=$((healthy + 1)); done
if [ "$healthy" -eq 2 ]; then
  pass "healthy: both api replicas healthy (HEALTHCHECK on /readyz) $(($(date +%s) - t0))s after up"
else
  fail "healthy: $healthy of 2 api replicas healthy after 60 s"
fi

if "$PYTHON" "$root/deploy/test/docker_smoke.py" stack --api "$nginx_url" --replicas 2 \
  --prometheus "$prom_url" --checkpoint "$work/baked.pt" --dataset "$DATASET" \
  --dashboard "$root/deploy/grafana/dashboards/convserve.json" --timeout 60 >"$work/smoke.log" 2>&1; then
  smoke_ok=1
else
  smoke_ok=0
fi
sed 's/^/    /' "$work/smoke.log"
if [ "$smoke_ok" -eq 1 ] && grep -q '^checks: .* 0 failed$' "$work/smoke.log"; then
  pass "stack: $(grep -c '^PASS' "$work/smoke.log") HTTP/Prometheus checks through nginx"
else
  fail "stack: $(grep -c '^FAIL' "$work/smoke.log") HTTP/Prometheus checks failed"
fi

# --- 4b. scale-out behind nginx: balance, limits, losing and replacing replicas under load -------
scale() { "$PYTHON" "$root/deploy/test/docker_scale.py" "$@"; }
judge() { # VERDICT-ARGS...: a PASS/FAIL line of docker_scale.py becomes one of ours
  local line
  if line="$(scale "$@")"; then pass "${line#PASS }"; else fail "${line#FAIL }"; fi
}
reload_nginx() {
  compose exec -T nginx nginx -e stderr -s reload >>"$work/scale.log" 2>&1 \
    || fail "nginx: reload failed ($(tail -n 3 "$work/scale.log"))"
  sleep 1 # the new workers take over; the old ones finish their requests
}
load_pid=""
start_load() { # NAME: steady bounded load through nginx until NAME.stop appears (240 s at most)
  rm -f "$work/$1.stop"
  scale load "$nginx_url" --out "$work/$1.json" --concurrency 4 --pause 0.01 \
    --until "$work/$1.stop" --max-seconds 240 >"$work/$1.log" 2>&1 &
  load_pid=$!
  sleep 3
}
end_load() { # NAME TITLE
  sleep 3
  touch "$work/$1.stop"
  wait "$load_pid" || true
  judge verdict "$work/$1.json" --name "$2"
}
new_replica() { # scales api to $1 and prints the id of the container that appeared
  local before
  before="$(api_ids)"
  compose up -d --no-build --no-deps --no-recreate --scale api="$1" api >>"$work/scale.log" 2>&1 \
    || { fail "scale: compose up --scale api=$1"; return 1; }
  comm -13 <(echo "$before") <(api_ids)
}
retire() { # ID: graceful stop (gunicorn drains), removal
  timeout 60 "$DOCKER" stop -t 35 "$1" >/dev/null
  "$DOCKER" rm "$1" >/dev/null
}

log "scale: 2 replicas, closed-loop load at concurrency 16 for 10 s through nginx"
scale snapshot --prometheus "$prom_url" --out "$work/before.json"
rps_2="$(scale load "$nginx_url" --out "$work/rps2.json" --concurrency 16 --max-seconds 10)"
judge verdict "$work/rps2.json" --name "load-2-replicas"
judge spread --prometheus "$prom_url" --since "$work/before.json" --load "$work/rps2.json" \
  --replicas 2 --min-share 0.3 --timeout 30
judge too-large "$nginx_url"

log "scale: docker stop of one replica under load, then a new replica and an nginx reload"
t_stop=$(date +%s)
start_load stop
old="$(api_ids | head -n1)"
retire "$old"
reload_nginx
new="$(new_replica 2)" || new=""
if [ -n "$new" ] && wait_healthy "$new" 120; then
  reload_nginx
else
  fail "scale: the new replica ${new:-?} was not healthy within 120 s"
fi
end_load stop "stop-and-replace (docker stop of a replica, a new one, nginx reloads)"
log "scale: stop-and-replace took $(($(date +%s) - t_stop))s"

log "scale: rolling replacement of both replicas, one at a time, under load"
t_roll=$(date +%s)
start_load rolling
for old in $(api_ids); do
  new="$(new_replica 3)" || new=""
  if [ -z "$new" ] || ! wait_healthy "$new" 120; then
    fail "rolling: the new replica ${new:-?} was not healthy within 120 s"
    break
  fi
  reload_nginx
  retire "$old"
  reload_nginx
done
end_load rolling "rolling-update (2 replicas replaced one at a time: start, reload, stop, reload)"
log "scale: rolling update took $(($(date +%s) - t_roll))s"

# --- 5. a mounted checkpoint replaces the baked one --------------------------------------------
mounted_version="$("$PYTHON" "$root/deploy/test/docker_smoke.py" variant "$work/baked.pt" "$work/mounted/model.pt")"
chmod -R a+rX "$work/mounted"
log "recreating api with API_MODEL_PATH=/models/model.pt (version $mounted_version), 1 replica"
API_MODEL_PATH=/models/model.pt compose up -d --no-build --no-deps --scale api=1 api >"$work/up2.log" 2>&1 \
  || { cat "$work/up2.log" >&2; fail "mount: compose up"; exit 1; }
id="$(api_ids | head -n1)"
wait_healthy "$id" 120 || fail "mount: the recreated replica was not healthy within 120 s"
reload_nginx
if "$PYTHON" "$root/deploy/test/docker_smoke.py" wait-ready "$nginx_url" --timeout 60 >/dev/null \
  && "$PYTHON" "$root/deploy/test/docker_smoke.py" model-version "$nginx_url" --expect "$mounted_version" \
    >"$work/mount.log" 2>&1; then
  pass "mount: serves the checkpoint mounted at /models/model.pt (version $mounted_version)"
else
  cat "$work/mount.log" 2>/dev/null
  fail "mount: the mounted checkpoint is not what is served"
fi
# The same model architecture and load as with 2 replicas: nginx's throughput with 1.
rps_1="$(scale load "$nginx_url" --out "$work/rps1.json" --concurrency 16 --max-seconds 10)"
judge verdict "$work/rps1.json" --name "load-1-replica"
log "scale: requests/s through nginx, concurrency 16: 1 replica $rps_1, 2 replicas $rps_2"

# --- 6. SIGTERM: gunicorn (under tini) drains and exits 0 --------------------------------------------
id="$(compose ps -q api | head -n1)"
t0=$(date +%s)
timeout 60 "$DOCKER" stop -t 35 "$id" >/dev/null
stop_s=$(($(date +%s) - t0))
code="$("$DOCKER" inspect --format '{{.State.ExitCode}}' "$id")"
if [ "$code" = 0 ] && [ "$stop_s" -lt 35 ]; then
  pass "sigterm: api stopped cleanly in ${stop_s}s, exit code 0"
else
  fail "sigterm: exit code $code after ${stop_s}s"
fi

log "image ${size_mb:-?} MB; build ${build_s:-?}s; cold start to ready ${cold_s:-?}s"
# cleanup (trap) brings the stack down, stops the engine and prints the closing line
