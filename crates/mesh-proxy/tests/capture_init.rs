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
