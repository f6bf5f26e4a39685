//! nginx and HAProxy from Debian's packages, configured as the same two-hop
//! path as the sidecars: plaintext HTTP/1.1 into proxy A, mTLS (TLS 1.3,
//! X25519, the same ECDSA P-256 SVIDs) from A to B, plaintext from B to the
//! app; keep-alive on every hop, access logs off, one worker each.
//!
//! Neither can check a SPIFFE ID, so A verifies B's chain and the DNS SAN
//! the bench adds to the server SVID; B verifies A's chain.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::certs::{Certs, SERVER_DNS};
use crate::procs::Proc;

/// Whether `program` is on the PATH.
pub(crate) fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs nginx and HAProxy with apt when missing (needs root).
pub(crate) fn install_missing() -> Result<()> {
    let missing: Vec<&str> = ["nginx", "haproxy"]
        .into_iter()
        .filter(|p| !have(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing {} with apt-get", missing.join(" "));
    let sudo = if have("id")
        && Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() != b"0")
    {
        "sudo "
    } else {
        ""
    };
    let script = format!(
        "{sudo}apt-get update -qq && DEBIAN_FRONTEND=noninteractive {sudo}apt-get install -y -qq {}",
        missing.join(" ")
    );
    let status = Command::new("sh").arg("-c").arg(&script).status()?;
    if !status.success() {
        bail!("`{script}` failed ({status})");
    }
    Ok(())
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// nginx A and B; returns their master processes.
pub(crate) fn nginx(
    dir: &Path,
    certs: &Certs,
    core: Option<usize>,
    app: u16,
    a_port: u16,
    b_port: u16,
) -> Result<(Proc, Proc)> {
    let common = |name: &str| {
        let d = dir.join(name);
        format!(
            r#"worker_processes 1;
daemon off;
master_process on;
pid {pid};
error_log {log} warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
"#,
            pid = p(&d.join("nginx.pid")),
            log = p(&d.join("error.log")),
            tmp = p(&d),
        )
    };
    let user = if is_root() { "user root;\n" } else { "" };
    let a = format!(
        r#"{user}{common}
  upstream b {{
    server 127.0.0.1:{b_port};
    keepalive 64;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
  }}
  server {{
    listen 127.0.0.1:{a_port} reuseport;
    location / {{
      proxy_pass https://b;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_certificate {cert};
      proxy_ssl_certificate_key {key};
      proxy_ssl_trusted_certificate {bundle};
      proxy_ssl_verify on;
      proxy_ssl_name {SERVER_DNS};
      proxy_ssl_protocols TLSv1.3;
      proxy_ssl_conf_command Groups X25519;
      proxy_ssl_session_reuse on;
    }}
  }}
}}
"#,
        common = common("nginx-a"),
        cert = p(&certs.client.cert),
        key = p(&certs.client.key),
        bundle = p(&certs.client.bundle),
    );
    let b = format!(
        r#"{user}{common}
  upstream app {{
    server 127.0.0.1:{app};
    keepalive 64;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
  }}
  server {{
    listen 127.0.0.1:{b_port} ssl reuseport;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_client_certificate {bundle};
    ssl_verify_client on;
    ssl_protocols TLSv1.3;
    ssl_ecdh_curve X25519;
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"#,
        common = common("nginx-b"),
        cert = p(&certs.server.cert),
        key = p(&certs.server.key),
        bundle = p(&certs.server.bundle),
    );
    let nginx = which("nginx")?;
    let start = |name: &str, conf: String| -> Result<Proc> {
        let d = dir.join(name);
        std::fs::create_dir_all(&d)?;
        let file = d.join("nginx.conf");
        std::fs::write(&file, conf)?;
        let args = vec![
            "-p".to_owned(),
            p(&d),
            "-c".to_owned(),
            p(&file),
            "-e".to_owned(),
            p(&d.join("error.log")),
        ];
        Proc::spawn(name, core, Path::new(&nginx), &args, &[], dir)
    };
    Ok((start("nginx-a", a)?, start("nginx-b", b)?))
}

/// HAProxy A and B.
pub(crate) fn haproxy(
    dir: &Path,
    certs: &Certs,
    core: Option<usize>,
    app: u16,
    a_port: u16,
    b_port: u16,
    max_connections: usize,
) -> Result<(Proc, Proc)> {
    // HAProxy wants two descriptors per connection; where the hard limit is
    // lower (20,000 here, and not ours to raise), `no strict-limits` lets it
    // start anyway: the idle connections need one each.
    let maxconn = max_connections + 100;
    let common = format!(
        r#"global
  nbthread 1
  maxconn {maxconn}
  no strict-limits
  ssl-default-bind-options ssl-min-ver TLSv1.3
  ssl-default-server-options ssl-min-ver TLSv1.3
defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
"#
    );
    // HAProxy 2.6 has no `curves` for servers: B's `bind` limits the group
    // to X25519, and OpenSSL's client sends an X25519 key share first anyway.
    let a = format!(
        r#"{common}
frontend a
  bind 127.0.0.1:{a_port}
  default_backend b
backend b
  http-reuse always
  server b 127.0.0.1:{b_port} ssl crt {crt} ca-file {bundle} verify required verifyhost {SERVER_DNS} alpn http/1.1
"#,
        crt = p(&certs.client.combined),
        bundle = p(&certs.client.bundle),
    );
    let b = format!(
        r#"{common}
frontend b
  bind 127.0.0.1:{b_port} ssl crt {crt} ca-file {bundle} verify required alpn http/1.1 curves X25519
  default_backend app
backend app
  http-reuse always
  server app 127.0.0.1:{app}
"#,
        crt = p(&certs.server.combined),
        bundle = p(&certs.server.bundle),
    );
    let haproxy = which("haproxy")?;
    let start = |name: &str, conf: String| -> Result<Proc> {
        let file = dir.join(format!("{name}.cfg"));
        std::fs::write(&file, conf)?;
        let check = Command::new(&haproxy)
            .args(["-c", "-f"])
            .arg(&file)
            .output()?;
        if !check.status.success() {
            bail!(
                "{name}: haproxy -c refused the configuration:\n{}",
                String::from_utf8_lossy(&[check.stdout, check.stderr].concat())
            );
        }
        let args = vec!["-db".to_owned(), "-f".to_owned(), p(&file)];
        Proc::spawn(name, core, Path::new(&haproxy), &args, &[], dir)
    };
    Ok((start("haproxy-a", a)?, start("haproxy-b", b)?))
}

fn which(program: &str) -> Result<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .with_context(|| format!("looking for {program}"))?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if path.is_empty() {
        bail!("{program} is not installed (run as root to let the harness install it)");
    }
    Ok(path)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}
