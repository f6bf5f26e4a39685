//! Network namespaces for capture tests: created per test, always removed
//! (the guard deletes it on drop, panics included). They need root; without
//! it [`Netns::create`] says so loudly and the test returns early.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// A network namespace of this test process.
#[derive(Debug)]
pub(crate) struct Netns {
    pub(crate) name: String,
}

impl Netns {
    /// A fresh namespace with loopback up, or `None` (and a loud message)
    /// when this process cannot make one.
    pub(crate) fn create(tag: &str) -> Option<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        if !is_root() {
            eprintln!("SKIPPED {tag}: network namespace tests need root (CI runs them as root)");
            return None;
        }
        let name = format!(
            "mesh-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        // Namespace names are interface-name-like; keep them short.
        let name: String = name.chars().take(40).collect();
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        Some(ns)
    }

    /// Runs `argv` inside the namespace.
    pub(crate) fn exec(&self, argv: &[&str]) -> Output {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(argv);
        Command::new("ip")
            .args(&args)
            .output()
            .expect("ip netns exec")
    }

    /// Runs `argv` inside the namespace and returns its standard output;
    /// panics with its error output when it fails.
    pub(crate) fn ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(
            out.status.success(),
            "{argv:?} in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The namespace's whole nftables ruleset.
    pub(crate) fn ruleset(&self) -> String {
        self.ok(&["nft", "list", "ruleset"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run(prog: &str, args: &[&str]) {
    let out = Command::new(prog).args(args).output().expect(prog);
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Is this process root (uid 0)?
pub(crate) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|u| u.split_whitespace().next().map(|x| x == "0"))
        })
        .unwrap_or(false)
}
