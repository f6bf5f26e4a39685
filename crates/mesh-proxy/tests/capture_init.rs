//! `mesh-proxy init` for real: nftables rules in network namespaces the
//! tests create and remove. Root only (CI runs as root); skipped loudly
//! otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netns;

use netns::Netns;

const BIN: &str = env!("CARGO_BIN_EXE_mesh-proxy");

#[test]
fn init_twice_gives_the_same_rules_and_remove_restores_the_namespace() {
    let Some(ns) = Netns::create("init") else {
        return;
    };
    let before = ns.ruleset();
    ns.ok(&[BIN, "init"]);
    let once = ns.ruleset();
    assert!(once.contains("table inet mesh"), "{once}");
    assert!(once.contains("redirect to :15006") && once.contains("redirect to :15001"));
    ns.ok(&[BIN, "init"]);
    assert_eq!(ns.ruleset(), once, "a second init changes nothing");
    // Other flags replace the rules whole, they do not add to them.
    ns.ok(&[BIN, "init", "--exclude-outbound-ports", "5432"]);
    let other = ns.ruleset();
    assert!(other.contains("tcp dport 5432 return"), "{other}");
    assert_eq!(other.matches("chain output").count(), 1);
    ns.ok(&[BIN, "init", "--remove"]);
    assert_eq!(ns.ruleset(), before);
    ns.ok(&[BIN, "init", "--remove"]);
    assert_eq!(ns.ruleset(), before, "removing twice is not an error");
}

#[test]
fn dry_run_prints_the_rules_and_changes_nothing() {
    let Some(ns) = Netns::create("dry") else {
        return;
    };
    let before = ns.ruleset();
    let printed = ns.ok(&[BIN, "init", "--dry-run", "--exclude-inbound-ports", "22"]);
    assert!(printed.contains("table inet mesh {"), "{printed}");
    assert!(printed.contains("tcp dport { 22, 15000"), "{printed}");
    assert_eq!(ns.ruleset(), before);
    // What it printed is what init installs.
    let script: String = printed
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let path = std::env::temp_dir().join(format!("{}.nft", ns.name));
    std::fs::write(&path, script).unwrap();
    ns.ok(&["nft", "-f", path.to_str().unwrap()]);
    let applied = ns.ruleset();
    ns.ok(&[BIN, "init", "--remove"]);
    ns.ok(&[BIN, "init", "--exclude-inbound-ports", "22"]);
    assert_eq!(ns.ruleset(), applied);
    let _ = std::fs::remove_file(path);
}

#[test]
fn another_tools_nat_rules_are_refused_unless_forced() {
    let Some(ns) = Netns::create("foreign") else {
        return;
    };
    ns.ok(&["nft", "add", "table", "ip", "nat"]);
    ns.ok(&[
        "nft",
        "add chain ip nat OUTPUT { type nat hook output priority -100; }",
    ]);
    ns.ok(&[
        "nft",
        "add rule ip nat OUTPUT tcp dport 80 redirect to :8080",
    ]);
    let before = ns.ruleset();
    let out = ns.exec(&[BIN, "init"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another tool's NAT rules")
            && err.contains("table ip nat chain OUTPUT: 1 rules"),
        "{err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(ns.ruleset(), before);
    ns.ok(&[BIN, "init", "--force"]);
    let after = ns.ruleset();
    assert!(after.contains("table inet mesh") && after.contains("table ip nat"));
}

#[test]
fn without_cap_net_admin_init_names_the_capability_and_changes_nothing() {
    let Some(ns) = Netns::create("nocap") else {
        return;
    };
    let before = ns.ruleset();
    let out = ns.exec(&[
        "setpriv",
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        BIN,
        "init",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CAP_NET_ADMIN") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(ns.ruleset(), before);
}

#[test]
fn bad_flags_name_the_flag() {
    let out = std::process::Command::new(BIN)
        .args([
            "init",
            "--dry-run",
            "--exclude-outbound-ip-ranges",
            "10.0.0.0/40",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--exclude-outbound-ip-ranges") && err.contains("prefix length"),
        "{err}"
    );
}

/// The rules themselves: an application's connection to a virtual IP is
/// redirected to the outbound capture port, the proxy's own (uid 1337) is
/// not, and inbound connections land on the inbound capture port. A small
/// Python listener reports each connection's original destination.
#[test]
fn the_rules_redirect_the_app_but_never_the_proxy() {
    let Some(mut cluster) = netns::Cluster::create("rules") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pod = cluster.pod("rules-a", 2);
    pod.ok(&[BIN, "init"]);
    // Listens on both capture ports and on 8080 (a "real" server), and
    // prints `port original-destination` per connection.
    let script = r#"
import socket, struct, sys, threading
SO_ORIGINAL_DST = 80
def serve(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(16)
    while True:
        c, _ = s.accept()
        try:
            raw = c.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            p, a = struct.unpack("!2xH4s8x", raw)
            print(port, socket.inet_ntoa(a) + ":" + str(p), flush=True)
        except OSError as e:
            print(port, "none", e, flush=True)
        c.close()
for p in (15001, 15006, 8080):
    threading.Thread(target=serve, args=(p,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;
    let log = dir.path().join("listener.log");
    let _listener = pod.spawn_as(None, &["python3", "-c", script], &log);
    let wait = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("ready")
    {
        assert!(
            wait.elapsed() < std::time::Duration::from_secs(20),
            "listener never ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let connect = |uid: u32, to: &str| {
        // bash's /dev/tcp: any uid can run it (python may live in root's
        // home).
        let (host, port) = to.rsplit_once(':').unwrap();
        let code = format!("exec 3<>/dev/tcp/{host}/{port}");
        let u = uid.to_string();
        pod.exec(&[
            "setpriv",
            "--reuid",
            &u,
            "--regid",
            &u,
            "--clear-groups",
            "timeout",
            "5",
            "bash",
            "-c",
            &code,
        ])
    };
    // The app (uid 1000) to a virtual IP: captured to 15001.
    let out = connect(1000, "10.96.0.10:3306");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The proxy (uid 1337) to the same: not captured, and nothing listens
    // at a virtual IP, so it fails.
    assert!(!connect(1337, "10.96.0.10:3306").status.success());
    // The app to itself over loopback: not captured.
    assert!(connect(1000, "127.0.0.1:8080").status.success());
    // From another pod, to this pod's 8080: captured inbound to 15006.
    let other = cluster.pod("rules-b", 3);
    let out = other.exec(&[
        "python3",
        "-c",
        "import socket; s=socket.create_connection(('10.244.0.2', 8080), 5); s.close()",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now();
    let lines = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.lines().count() >= 4 || deadline.elapsed() > std::time::Duration::from_secs(10) {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(lines.contains("15001 10.96.0.10:3306"), "{lines}");
    assert!(lines.contains("15006 10.244.0.2:8080"), "{lines}");
    assert!(
        lines.contains("8080 127.0.0.1:8080"),
        "loopback went straight to the server: {lines}"
    );
    assert!(!lines.contains("15001 127.0.0.1"), "{lines}");
    assert_eq!(
        lines.matches("15001 ").count(),
        1,
        "only the app was captured: {lines}"
    );
}
