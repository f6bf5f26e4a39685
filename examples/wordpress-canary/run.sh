#!/usr/bin/env bash
# The WordPress canary, for real, on one machine: MariaDB, mesh-ca, WordPress
# v1 and v2 (two `php -S` servers of the same WordPress; v2 is marked by a
# must-use plugin), a mesh-proxy sidecar for each of them, and the gateway on
# https://blog.example.test:8443 splitting 90/10. Everything talks mTLS with
# SPIFFE identities issued by mesh-ca; WordPress reaches MySQL only through its
# sidecar's local outbound port.
#
#   examples/wordpress-canary/run.sh          start, print, wait for Ctrl-C, stop
#   examples/wordpress-canary/run.sh start    start in the background and return when ready
#   examples/wordpress-canary/run.sh stop     stop what `start` started
#
# Environment: MESH_STATE (state folder, default target/wordpress-canary),
# MESH_BIN (folder with mesh-proxy and mesh-ca; built in release when unset).
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

install_packages() {
  local missing=()
  command -v php >/dev/null || missing+=(php-cli)
  php -m 2>/dev/null | grep -qi '^mysqli$' || missing+=(php-mysql)
  command -v mariadbd >/dev/null || missing+=(mariadb-server)
  [ -f /usr/share/wordpress/wp-settings.php ] || missing+=(wordpress)
  command -v curl >/dev/null || missing+=(curl)
  command -v openssl >/dev/null || missing+=(openssl)
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

edge() { # curl through the gateway with the blog's name and certificate
  curl -s --resolve "$host:$https_port:127.0.0.1" --cacert "$state/mesh/certs/$host.crt" "$@"
}

start_db() {
  local db=$state/db
  mkdir -p "$db"
  local user=()
  [ "$(id -u)" -eq 0 ] && user=(--user=root)
  mariadb-install-db --datadir="$db" "${user[@]}" --auth-root-authentication-method=socket \
    --skip-test-db >"$state/logs/mariadb-install.log" 2>&1
  spawn mariadb mariadbd --no-defaults --datadir="$db" "${user[@]}" --bind-address=127.0.0.1 \
    --port=$db_port --socket="$state/db.sock" --pid-file="$state/db.pid" --skip-name-resolve
  wait_for MariaDB mariadb --no-defaults -S "$state/db.sock" -u root -e 'SELECT 1'
  mariadb --no-defaults -S "$state/db.sock" -u root <<SQL
CREATE DATABASE wordpress;
CREATE USER 'wordpress'@'127.0.0.1' IDENTIFIED BY '$db_password';
GRANT ALL ON wordpress.* TO 'wordpress'@'127.0.0.1';
SQL
}

# A WordPress tree per version, sharing the package's files by hard link when
# it can; only wp-config.php (and v2's marker plugin) are its own.
wordpress_tree() { # version
  local dir=$state/wp-$1
  cp -al /usr/share/wordpress "$dir" 2>/dev/null || cp -a /usr/share/wordpress "$dir"
  rm -f "$dir/wp-config.php" "$dir/.htaccess"
  mkdir -p "$dir/wp-content/uploads" "$dir/wp-content/mu-plugins"
  cat >"$dir/wp-config.php" <<'PHP'
<?php
// Written by the mesh's WordPress canary. The database is reached through
// the workload's sidecar (a local port), never directly.
define('DB_NAME', 'wordpress');
define('DB_USER', 'wordpress');
define('DB_PASSWORD', getenv('MESH_DB_PASSWORD'));
define('DB_HOST', getenv('MESH_DB_HOST'));
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
}

start_wordpress() { # version app-port db-local-port
  local version=$1 port=$2 dbport=$3
  wordpress_tree "$version"
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
  spawn "php-$version" env MESH_DB_HOST="127.0.0.1:$dbport" MESH_DB_PASSWORD="$db_password" \
    MESH_WP_HOME="https://$host:$https_port" MESH_WP_SALT="$wp_salt" PHP_CLI_SERVER_WORKERS=4 \
    php -S "127.0.0.1:$port" -t "$state/wp-$version"
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

  # The mesh configuration: the example folder, plus the edge certificate.
  cp -r "$here/mesh" "$state/mesh"
  mkdir -p "$state/mesh/certs"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -keyout "$state/mesh/certs/$host.key" -out "$state/mesh/certs/$host.crt" \
    -subj "/CN=$host" -addext "subjectAltName=DNS:$host" 2>/dev/null
  "$bin/mesh-proxy" check --config "$state/mesh" >"$state/logs/check.log" || die "mesh-proxy check failed: $(cat "$state/logs/check.log")"

  log "starting mesh-ca on $ca_addr"
  "$bin/mesh-ca" init --dir "$state/ca" --trust-domain $td >/dev/null
  spawn mesh-ca "$bin/mesh-ca" serve --dir "$state/ca" --listen $ca_addr --metrics-addr $ca_metrics_addr
  token() { "$bin/mesh-ca" token --dir "$state/ca" --id "spiffe://$td/ns/default/sa/$1" --ttl 1h; }
  local sidecar=("$bin/mesh-proxy" sidecar --config "$state/mesh" --ca $ca_addr --ca-root "$state/ca/root-cert.pem" --http-proxy off)

  log "starting MariaDB on 127.0.0.1:$db_port (reachable through its sidecar on 15306)"
  start_db
  spawn sidecar-mysql "${sidecar[@]}" --workload mysql --app 127.0.0.1:$db_port --admin 127.0.0.1:15300 --token "$(token mysql)"

  log "starting WordPress v1 (127.0.0.1:8081) and v2 (127.0.0.1:8082)"
  start_wordpress v1 8081 13306
  start_wordpress v2 8082 13316
  spawn sidecar-v1 "${sidecar[@]}" --workload wordpress-v1 --app 127.0.0.1:8081 --admin 127.0.0.1:15301 \
    --outbound mysql.default.svc.cluster.local:3306=127.0.0.1:13306 --token "$(token wordpress)"
  spawn sidecar-v2 "${sidecar[@]}" --workload wordpress-v2 --app 127.0.0.1:8082 --admin 127.0.0.1:15302 \
    --outbound mysql.default.svc.cluster.local:3306=127.0.0.1:13316 --token "$(token wordpress)"

  log "starting the gateway on https://$host:$https_port"
  spawn gateway "$bin/mesh-proxy" gateway --config "$state/mesh" --gateway blog-gateway --ca $ca_addr \
    --ca-root "$state/ca/root-cert.pem" --admin 127.0.0.1:15000 --token "$(token blog-gateway)"

  for port in 15300 15301 15302 15000; do wait_for "the proxy with admin port $port" ready $port; done
  wait_for "WordPress v1" curl -sf -o /dev/null http://127.0.0.1:8081/wp-login.php
  wait_for "WordPress v2" curl -sf -o /dev/null http://127.0.0.1:8082/wp-login.php

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
  log "stopped"
}

split() { # the live split, from the gateway's metrics
  curl -s http://127.0.0.1:15000/stats/prometheus | awk '
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
  run)
    trap 'stop; exit 0' INT TERM
    start
    cat <<EOF

  The blog:      https://$host:$https_port/   (admin: admin / $(cat "$state/admin-password"))
  With curl:     curl --resolve $host:$https_port:127.0.0.1 --cacert $state/mesh/certs/$host.crt https://$host:$https_port/
  In a browser:  add "127.0.0.1 $host" to /etc/hosts and accept $state/mesh/certs/$host.crt
  Mesh config:   $state/mesh (edit the VirtualService in edge.yaml: weights change live)
  Admin:         gateway http://127.0.0.1:15000/stats/prometheus, sidecars 15300 (mysql) 15301 (v1) 15302 (v2)
  CA metrics:    http://$ca_metrics_addr/metrics
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
  *) die "usage: $0 [run|start|stop|split]" ;;
esac
