#!/usr/bin/env bash
# The WordPress canary, for real, on one machine: MariaDB, mesh-ca, WordPress
# v1 and v2 (two `php -S` servers of the same WordPress; v2 is marked by a
# must-use plugin), a mesh-proxy sidecar for each of them, and the gateway on
# https://blog.example.test:8443 splitting 90/10. Everything talks mTLS with
# SPIFFE identities issued by mesh-ca. mesh-ca is the control plane too: it
# serves the configuration folder ($MESH_STATE/mesh) to every proxy over
# xDS, and the proxies read no folder of their own (`--control-plane`): an
# edit of the folder reaches them all, live.
#
# Two modes (MESH_MODE, default `pods` as root, else `explicit`):
# - pods: MariaDB, WordPress v1, v2 and the gateway each in a network
#   namespace of its own (mesh-wp-*), with an address on a bridge of the host
#   (mesh-br0, 10.248.0.0/24) as pods have; services have virtual IPs that the
#   pods' /etc/hosts name (/etc/netns/<pod>/hosts), as cluster IPs are; each
#   pod runs `mesh-proxy init` and its sidecar in capture mode as uid 1337.
#   The apps know nothing of the mesh: WordPress's DB_HOST is `mysql:3306`,
#   as in the article's deployment. The gateway listens on its pod's address,
#   reachable from the host.
# - explicit: everything on 127.0.0.1, WordPress reaching MySQL through its
#   sidecar's local outbound port. Needs no root.
#
#   examples/wordpress-canary/run.sh          start, print, wait for Ctrl-C, stop
#   examples/wordpress-canary/run.sh start    start in the background and return when ready
#   examples/wordpress-canary/run.sh stop     stop what `start` started
#
#   examples/wordpress-canary/run.sh metrics NAME   a proxy's metrics (gateway, mysql, v1, v2, ca)
#   examples/wordpress-canary/run.sh restart-control-plane   stop mesh-ca and start it again
#
# Environment: MESH_STATE (state folder, default target/wordpress-canary),
# MESH_BIN (folder with mesh-proxy and mesh-ca; built in release when unset),
# MESH_MODE (pods or explicit). `start` writes $MESH_STATE/endpoints: the
# mode and the addresses a client uses (KEY=VALUE lines).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
state=${MESH_STATE:-$repo/target/wordpress-canary}
host=blog.example.test
https_port=8443
http_port=8080
db_port=3307
ca_addr=127.0.0.1:15012
ca_metrics_addr=127.0.0.1:15014
td=cluster.local

log() { printf '[wordpress-canary] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The mode: pods needs root (namespaces, nftables); without it, explicit.
mode=${MESH_MODE:-}
if [ -z "$mode" ] && [ -f "$state/endpoints" ]; then
  mode=$(sed -n 's/^MODE=//p' "$state/endpoints")
fi
if [ -z "$mode" ]; then
  if [ "$(id -u)" -eq 0 ]; then mode=pods; else mode=explicit; fi
fi
case "$mode" in
  pods) [ "$(id -u)" -eq 0 ] || die "MESH_MODE=pods needs root (network namespaces and nftables)" ;;
  explicit) ;;
  *) die "MESH_MODE is pods or explicit, not $mode" ;;
esac

# Pods mode: the bridge, the pods' addresses and the services' virtual IPs
# (those of pods/services.yaml).
bridge=mesh-br0
node_ip=10.248.0.1
declare -A pod_ip=([mysql]=10.248.0.10 [v1]=10.248.0.11 [v2]=10.248.0.12 [gateway]=10.248.0.13)
proxy_uid=1337
ns() { echo "mesh-wp-$1"; }
in_pod() { local pod=$1; shift; ip netns exec "$(ns "$pod")" "$@"; }
as_proxy() { setpriv --reuid $proxy_uid --regid $proxy_uid --clear-groups "$@"; }

install_packages() {
  local missing=()
  command -v php >/dev/null || missing+=(php-cli)
  php -m 2>/dev/null | grep -qi '^mysqli$' || missing+=(php-mysql)
  command -v mariadbd >/dev/null || missing+=(mariadb-server)
  [ -f /usr/share/wordpress/wp-settings.php ] || missing+=(wordpress)
  command -v curl >/dev/null || missing+=(curl)
  command -v openssl >/dev/null || missing+=(openssl)
  if [ "$mode" = pods ]; then
    command -v nft >/dev/null || missing+=(nftables)
    command -v ip >/dev/null || missing+=(iproute2)
  fi
  [ "${#missing[@]}" -eq 0 ] && return
  log "installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}" >/dev/null
}

binaries() {
  if [ -n "${MESH_BIN:-}" ]; then
    bin=$MESH_BIN
  else
    log "building mesh-proxy and mesh-ca (release)"
    # mesh-ca is the binary of the mesh-control crate.
    (cd "$repo" && cargo build --release -q -p mesh-proxy -p mesh-control)
    bin=$repo/target/release
  fi
  [ -x "$bin/mesh-proxy" ] && [ -x "$bin/mesh-ca" ] || die "no mesh-proxy/mesh-ca in $bin"
}

# Runs a command in the background in its own process group (php -S forks
# workers), logging to $state/logs/NAME.log.
spawn() {
  local name=$1; shift
  setsid "$@" >"$state/logs/$name.log" 2>&1 </dev/null &
  echo "$! $name" >>"$state/pids"
}

wait_for() { # what, command...
  local what=$1; shift
  for _ in $(seq 1 300); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  die "$what did not come up; see $state/logs"
}

ready() { curl -sf "http://127.0.0.1:$1/ready" >/dev/null; }
pod_ready() { in_pod "$1" curl -sf "http://127.0.0.1:15000/ready" >/dev/null; }

edge() { # curl through the gateway with the blog's name and certificate
  curl -s --resolve "$host:$https_port:$edge_ip" --cacert "$state/mesh/certs/$host.crt" "$@"
}

# Pods mode's network: the bridge on the host, a namespace per pod with a
# veth on it, no default route (nothing leaves the machine: a connection to
# a virtual IP that capture missed fails on the bridge), and /etc/hosts
# entries for the services' virtual IPs.
make_pods() {
  ip link add $bridge type bridge
  ip addr add $node_ip/24 dev $bridge
  ip link set $bridge up
  local pod n=0
  for pod in mysql v1 v2 gateway; do
    n=$((n + 1))
    ip netns add "$(ns $pod)"
    ip link add "mesh-wp$n" type veth peer name eth0 netns "$(ns $pod)"
    ip link set "mesh-wp$n" master $bridge up
    in_pod $pod ip link set lo up
    in_pod $pod ip link set eth0 up
    in_pod $pod ip addr add "${pod_ip[$pod]}/24" dev eth0
    in_pod $pod ip route add 10.96.0.0/12 dev eth0
    mkdir -p "/etc/netns/$(ns $pod)"
    cat >"/etc/netns/$(ns $pod)/hosts" <<HOSTS
127.0.0.1 localhost
${pod_ip[$pod]} $pod
10.96.0.20 mysql mysql.default mysql.default.svc.cluster.local
10.96.0.10 wordpress wordpress.default wordpress.default.svc.cluster.local
HOSTS
  done
}

remove_pods() {
  local pod
  for pod in mysql v1 v2 gateway; do
    ip netns del "$(ns $pod)" 2>/dev/null || true
    rm -rf "/etc/netns/$(ns $pod)"
  done
  ip link del $bridge 2>/dev/null || true
}

start_db() { # bind-address port client-address [pod]
  local bind=$1 port=$2 client=$3 pod=${4:-}
  local db=$state/db
  mkdir -p "$db"
  local user=() run=()
  [ "$(id -u)" -eq 0 ] && user=(--user=root)
  [ -n "$pod" ] && run=(ip netns exec "$(ns "$pod")")
  mariadb-install-db --datadir="$db" "${user[@]}" --auth-root-authentication-method=socket \
    --skip-test-db >"$state/logs/mariadb-install.log" 2>&1
  spawn mariadb "${run[@]}" mariadbd --no-defaults --datadir="$db" "${user[@]}" --bind-address="$bind" \
    --port="$port" --socket="$state/db.sock" --pid-file="$state/db.pid" --skip-name-resolve
  wait_for MariaDB mariadb --no-defaults -S "$state/db.sock" -u root -e 'SELECT 1'
  # The database's only client is its own sidecar, from the pod's (or the
  # machine's) own address.
  mariadb --no-defaults -S "$state/db.sock" -u root <<SQL
CREATE DATABASE wordpress;
CREATE USER 'wordpress'@'$client' IDENTIFIED BY '$db_password';
GRANT ALL ON wordpress.* TO 'wordpress'@'$client';
SQL
}

# A WordPress tree per version, sharing the package's files by hard link when
# it can; only wp-config.php (and v2's marker plugin) are its own.
wordpress_tree() { # version db-host
  local dir=$state/wp-$1
  cp -al /usr/share/wordpress "$dir" 2>/dev/null || cp -a /usr/share/wordpress "$dir"
  rm -f "$dir/wp-config.php" "$dir/.htaccess"
  mkdir -p "$dir/wp-content/uploads" "$dir/wp-content/mu-plugins"
  cat >"$dir/wp-config.php" <<'PHP'
<?php
// Written by the mesh's WordPress canary. DB_HOST is the service's name in
// pods mode (the sidecar captures the connection), the sidecar's local
// outbound port in explicit mode.
define('DB_NAME', 'wordpress');
define('DB_USER', 'wordpress');
define('DB_PASSWORD', getenv('MESH_DB_PASSWORD'));
define('DB_HOST', 'MESH_DB_HOST_VALUE');
define('DB_CHARSET', 'utf8mb4');
define('DB_COLLATE', '');
$table_prefix = 'wp_';
// Links point at the gateway, whatever port the app listens on.
define('WP_HOME', getenv('MESH_WP_HOME'));
define('WP_SITEURL', getenv('MESH_WP_HOME'));
if (($_SERVER['HTTP_X_FORWARDED_PROTO'] ?? '') === 'https') {
    $_SERVER['HTTPS'] = 'on';
}
foreach (['AUTH_KEY', 'SECURE_AUTH_KEY', 'LOGGED_IN_KEY', 'NONCE_KEY', 'AUTH_SALT',
          'SECURE_AUTH_SALT', 'LOGGED_IN_SALT', 'NONCE_SALT'] as $k) {
    define($k, getenv('MESH_WP_SALT') . $k);
}
define('WP_CONTENT_DIR', __DIR__ . '/wp-content');
define('DISABLE_WP_CRON', true);
define('WP_HTTP_BLOCK_EXTERNAL', true);
define('AUTOMATIC_UPDATER_DISABLED', true);
if (!defined('ABSPATH')) {
    define('ABSPATH', __DIR__ . '/');
}
require_once ABSPATH . 'wp-settings.php';
PHP
  sed -i "s|MESH_DB_HOST_VALUE|$2|" "$dir/wp-config.php"
}

start_wordpress() { # version listen-address listen-port db-host [pod]
  local version=$1 addr=$2 port=$3 dbhost=$4 pod=${5:-}
  local run=()
  [ -n "$pod" ] && run=(ip netns exec "$(ns "$pod")")
  wordpress_tree "$version" "$dbhost"
  if [ "$version" = v2 ]; then
    cat >"$state/wp-v2/wp-content/mu-plugins/mesh-canary-v2.php" <<'PHP'
<?php
/* Plugin Name: mesh canary marker (v2) */
add_action('init', function () {
    if (!headers_sent()) {
        header('X-App-Version: v2');
    }
});
add_action('wp_footer', function () {
    echo "\n<!-- mesh-canary: v2 -->\n";
});
PHP
  fi
  spawn "php-$version" "${run[@]}" env MESH_DB_PASSWORD="$db_password" \
    MESH_WP_HOME="https://$host:$https_port" MESH_WP_SALT="$wp_salt" PHP_CLI_SERVER_WORKERS=4 \
    php -S "$addr:$port" -t "$state/wp-$version"
}

start() {
  install_packages
  binaries
  [ -e "$state/pids" ] && die "already running ($state/pids exists); run '$0 stop' first"
  rm -rf "$state"
  mkdir -p "$state/logs"
  : >"$state/pids"
  db_password=$(openssl rand -hex 12)
  wp_salt=$(openssl rand -hex 24)
  if [ "$(id -u)" -ne 0 ]; then
    log "not root: explicit mode (apps on 127.0.0.1, pointed at their sidecars' local ports); run as root for pods with transparent capture"
  fi
  log "mode: $mode"

  # The mesh configuration: the example folder, plus the edge certificate;
  # in pods mode, the services and workloads of the pods.
  cp -r "$here/mesh" "$state/mesh"
  if [ "$mode" = pods ]; then cp "$here/pods/services.yaml" "$state/mesh/services.yaml"; fi
  mkdir -p "$state/mesh/certs"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -keyout "$state/mesh/certs/$host.key" -out "$state/mesh/certs/$host.crt" \
    -subj "/CN=$host" -addext "subjectAltName=DNS:$host" 2>/dev/null
  local check_flags=()
  if [ "$mode" = pods ]; then check_flags=(--capture); fi
  "$bin/mesh-proxy" check "${check_flags[@]}" --config "$state/mesh" >"$state/logs/check.log" || die "mesh-proxy check failed: $(cat "$state/logs/check.log")"

  if [ "$mode" = pods ]; then
    start_pods
  else
    start_explicit
  fi

  wait_for "WordPress v1" wp_up v1
  wait_for "WordPress v2" wp_up v2

  log "installing WordPress through the mesh"
  local admin_password
  admin_password=$(openssl rand -hex 10)
  echo "$admin_password" >"$state/admin-password"
  edge -o "$state/logs/install.html" -w '%{http_code}' "https://$host:$https_port/wp-admin/install.php?step=2" \
    --data-urlencode "weblog_title=Mesh Canary Blog" --data-urlencode "user_name=admin" \
    --data-urlencode "admin_password=$admin_password" --data-urlencode "admin_password2=$admin_password" \
    --data-urlencode "pw_weak=1" --data-urlencode "admin_email=admin@example.test" \
    --data-urlencode "blog_public=0" >"$state/logs/install.status"
  grep -q 200 "$state/logs/install.status" || die "the WordPress install answered $(cat "$state/logs/install.status")"
  local front
  front=$(edge "https://$host:$https_port/")
  [[ $front == *"Mesh Canary Blog"* ]] || die "the blog's front page does not show"
  log "ready"
}

wp_up() { # version: WordPress answers on its own port
  if [ "$mode" = pods ]; then
    in_pod "$1" curl -sf -o /dev/null "http://${pod_ip[$1]}:8080/wp-login.php"
  else
    local port=8081
    [ "$1" = v2 ] && port=8082
    curl -sf -o /dev/null "http://127.0.0.1:$port/wp-login.php"
  fi
}

token() { "$bin/mesh-ca" token --dir "$state/ca" --id "spiffe://$td/ns/default/sa/$1" --ttl 1h; }

# mesh-ca as the CA and the control plane (the configuration folder over
# xDS), on its serving and metrics addresses; its arguments are kept for
# `restart-control-plane`.
control_plane() { # listen metrics
  printf '%s\n' "$1" "$2" "$bin" >"$state/control-plane"
  spawn mesh-ca "$bin/mesh-ca" serve --dir "$state/ca" --listen "$1" --metrics-addr "$2" --config "$state/mesh"
  wait_for mesh-ca curl -s -o /dev/null "http://$2/metrics"
}

# Stops mesh-ca (SIGTERM: it drains) and starts it again on the same
# addresses. The proxies keep serving their last good configuration and
# certificates meanwhile, reconnect, and follow it again.
restart_control_plane() {
  local pid
  pid=$(awk '$2 == "mesh-ca" { print $1 }' "$state/pids" | tail -1)
  [ -n "$pid" ] || die "mesh-ca is not running"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && die "mesh-ca did not stop"
  awk -v pid="$pid" '$1 != pid' "$state/pids" >"$state/pids.tmp" && mv "$state/pids.tmp" "$state/pids"
  mv "$state/logs/mesh-ca.log" "$state/logs/mesh-ca.$(date +%s%N).log"
  local listen metrics
  { read -r listen; read -r metrics; read -r bin; } <"$state/control-plane"
  control_plane "$listen" "$metrics"
  log "mesh-ca restarted on $listen"
}

start_explicit() {
  edge_ip=127.0.0.1
  printf '%s\n' MODE=explicit EDGE_IP=127.0.0.1 MYSQL_INBOUND=127.0.0.1:15306 \
    V1_INBOUND=127.0.0.1:15081 "CA_METRICS=$ca_metrics_addr" >"$state/endpoints"
  log "starting mesh-ca on $ca_addr"
  "$bin/mesh-ca" init --dir "$state/ca" --trust-domain $td >/dev/null
  control_plane $ca_addr $ca_metrics_addr
  local sidecar=("$bin/mesh-proxy" sidecar --control-plane $ca_addr --ca-root "$state/ca/root-cert.pem" --http-proxy off)

  log "starting MariaDB on 127.0.0.1:$db_port (reachable through its sidecar on 15306)"
  start_db 127.0.0.1 $db_port 127.0.0.1
  spawn sidecar-mysql "${sidecar[@]}" --workload mysql --service-account mysql --app 127.0.0.1:$db_port \
    --admin 127.0.0.1:15300 --token "$(token mysql)"

  log "starting WordPress v1 (127.0.0.1:8081) and v2 (127.0.0.1:8082)"
  start_wordpress v1 127.0.0.1 8081 127.0.0.1:13306
  start_wordpress v2 127.0.0.1 8082 127.0.0.1:13316
  spawn sidecar-v1 "${sidecar[@]}" --workload wordpress-v1 --service-account wordpress --app 127.0.0.1:8081 --admin 127.0.0.1:15301 \
    --outbound mysql.default.svc.cluster.local:3306=127.0.0.1:13306 --token "$(token wordpress)"
  spawn sidecar-v2 "${sidecar[@]}" --workload wordpress-v2 --service-account wordpress --app 127.0.0.1:8082 --admin 127.0.0.1:15302 \
    --outbound mysql.default.svc.cluster.local:3306=127.0.0.1:13316 --token "$(token wordpress)"

  log "starting the gateway on https://$host:$https_port"
  spawn gateway "$bin/mesh-proxy" gateway --control-plane $ca_addr --gateway blog-gateway \
    --credentials-dir "$state/mesh" --ca-root "$state/ca/root-cert.pem" --admin 127.0.0.1:15000 \
    --token "$(token blog-gateway)"

  for port in 15300 15301 15302 15000; do wait_for "the proxy with admin port $port" ready $port; done
}

# A sidecar in capture mode in its pod, as the proxy's uid, its metrics on
# the pod's status port (as the injector sets it) for the mesh page.
pod_sidecar() { # pod workload service-account
  spawn "sidecar-$1" ip netns exec "$(ns "$1")" setpriv --reuid $proxy_uid --regid $proxy_uid --clear-groups \
    "$bin/mesh-proxy" sidecar --capture --control-plane "$pod_ca" --workload "$2" --service-account "$3" \
    --ca-root "$state/ca/root-cert.pem" --token "$(token "$3")" --status-addr 0.0.0.0:15020
}

start_pods() {
  edge_ip=${pod_ip[gateway]}
  pod_ca=$node_ip:15012
  local ca_metrics=$node_ip:15014
  printf '%s\n' MODE=pods "EDGE_IP=$edge_ip" "MYSQL_INBOUND=${pod_ip[mysql]}:3306" \
    "V1_INBOUND=${pod_ip[v1]}:8080" "CA_METRICS=$ca_metrics" >"$state/endpoints"
  remove_pods
  make_pods
  # The proxies run as uid 1337: they read the configuration and the CA's
  # root (not its keys) from the state folder.
  chmod 755 "$state" "$state/mesh"
  chmod -R a+rX "$state/mesh"

  log "starting mesh-ca on $pod_ca (the host, on the pods' bridge)"
  "$bin/mesh-ca" init --dir "$state/ca" --trust-domain $td >/dev/null
  chmod 755 "$state/ca"
  chmod 644 "$state/ca/root-cert.pem"
  control_plane "$pod_ca" "$ca_metrics"
  local pod
  for pod in mysql v1 v2; do
    in_pod $pod "$bin/mesh-proxy" init >"$state/logs/init-$pod.log" 2>&1 ||
      die "mesh-proxy init in $(ns $pod): $(cat "$state/logs/init-$pod.log")"
  done

  log "starting MariaDB in $(ns mysql) on ${pod_ip[mysql]}:3306 (mysql.default.svc.cluster.local, 10.96.0.20)"
  start_db "${pod_ip[mysql]}" 3306 "${pod_ip[mysql]}" mysql
  pod_sidecar mysql mysql mysql

  log "starting WordPress v1 and v2 in $(ns v1) and $(ns v2), on port 8080, with DB_HOST mysql:3306"
  start_wordpress v1 0.0.0.0 8080 mysql:3306 v1
  start_wordpress v2 0.0.0.0 8080 mysql:3306 v2
  pod_sidecar v1 wordpress-v1 wordpress
  pod_sidecar v2 wordpress-v2 wordpress

  log "starting the gateway in $(ns gateway) on https://$host:$https_port ($edge_ip)"
  spawn gateway ip netns exec "$(ns gateway)" setpriv --reuid $proxy_uid --regid $proxy_uid --clear-groups \
    "$bin/mesh-proxy" gateway --control-plane "$pod_ca" --gateway blog-gateway --listen-address 0.0.0.0 \
    --credentials-dir "$state/mesh" --ca-root "$state/ca/root-cert.pem" --token "$(token blog-gateway)"
  for pod in mysql v1 v2 gateway; do wait_for "the proxy in $(ns $pod)" pod_ready $pod; done
}

# A proxy's metrics, whatever the mode.
metrics() { # gateway|mysql|v1|v2|ca
  local mode_now
  mode_now=$(sed -n 's/^MODE=//p' "$state/endpoints" 2>/dev/null)
  if [ "$1" = ca ]; then
    curl -s "http://$(sed -n 's/^CA_METRICS=//p' "$state/endpoints")/metrics"
  elif [ "$mode_now" = pods ]; then
    in_pod "$1" curl -s http://127.0.0.1:15000/stats/prometheus
  else
    local -A admin=([gateway]=15000 [mysql]=15300 [v1]=15301 [v2]=15302)
    curl -s "http://127.0.0.1:${admin[$1]}/stats/prometheus"
  fi
}

stop() {
  [ -f "$state/pids" ] || return 0
  # Proxies first (they drain on SIGTERM), then the apps, the CA, the database.
  tac "$state/pids" | while read -r pid _; do
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for _ in $(seq 1 100); do
    alive=0
    while read -r pid _; do kill -0 "$pid" 2>/dev/null && alive=1; done <"$state/pids"
    [ $alive -eq 0 ] && break
    sleep 0.1
  done
  while read -r pid _; do kill -KILL -- "-$pid" 2>/dev/null || true; done <"$state/pids"
  rm -f "$state/pids"
  if grep -q '^MODE=pods' "$state/endpoints" 2>/dev/null; then
    remove_pods
  fi
  log "stopped"
}

split() { # the live split, from the gateway's metrics
  metrics gateway | awk '
    /^istio_requests_total/ && /reporter="source"/ {
      match($0, /destination_version="[^"]*"/); v = substr($0, RSTART + 21, RLENGTH - 22)
      n[v] += $NF; t += $NF
    }
    END { for (v in n) printf "  %s: %d requests (%.1f%%)\n", v, n[v], 100 * n[v] / t }'
}

case "${1:-run}" in
  start) start ;;
  stop) stop ;;
  split) split ;;
  metrics) metrics "${2:?usage: $0 metrics gateway|mysql|v1|v2|ca}" ;;
  restart-control-plane) restart_control_plane ;;
  run)
    trap 'stop; exit 0' INT TERM
    start
    if [ "$mode" = pods ]; then
      admins="run.sh metrics gateway|mysql|v1|v2 (admin 127.0.0.1:15000 inside each pod: ip netns exec mesh-wp-v1 curl ...)"
    else
      admins="gateway http://127.0.0.1:15000/stats/prometheus, sidecars 15300 (mysql) 15301 (v1) 15302 (v2)"
    fi
    cat <<EOF

  Mode:          $mode
  The blog:      https://$host:$https_port/   (admin: admin / $(cat "$state/admin-password"))
  With curl:     curl --resolve $host:$https_port:$edge_ip --cacert $state/mesh/certs/$host.crt https://$host:$https_port/
  In a browser:  add "$edge_ip $host" to /etc/hosts and accept $state/mesh/certs/$host.crt
  Mesh config:   $state/mesh (mesh-ca serves it to every proxy: edit the VirtualService in edge.yaml, weights change live)
  Admin:         $admins
  CA metrics:    http://$(sed -n 's/^CA_METRICS=//p' "$state/endpoints")/metrics
  Mesh page:     http://$(sed -n 's/^CA_METRICS=//p' "$state/endpoints")/mesh   (the graph, the live split, mTLS, check's problems)
  Logs:          $state/logs

  Ctrl-C stops everything.
EOF
    for _ in $(seq 1 20); do edge -o /dev/null "https://$host:$https_port/"; done
    while true; do
      log "live split (gateway metrics):"
      split
      sleep 10
    done
    ;;
  *) die "usage: $0 [run|start|stop|split|metrics NAME|restart-control-plane]" ;;
esac
