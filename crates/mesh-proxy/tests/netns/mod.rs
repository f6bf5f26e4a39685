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
    /// Deleted on drop; a [`Cluster`]'s pods are handed out as handles
    /// that are not.
    owned: bool,
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
        let ns = Self { name, owned: true };
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
        if !self.owned {
            return;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A small cluster in network namespaces: a "node" namespace holding a
/// bridge (`10.244.0.1/24`, `fd00:244::1/64`), and pods, each a namespace
/// of its own with an `eth0` on the bridge, its address, and a default
/// route through the node, so that virtual IPs route (and are captured
/// before they leave the pod). Nothing of it is visible from the host's
/// network namespace, so tests running at once use the same addresses
/// without meeting. Dropping it removes every namespace.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub(crate) node: Netns,
    pods: Vec<Netns>,
}

impl Cluster {
    /// A cluster, or `None` (loudly) without root.
    pub(crate) fn create(tag: &str) -> Option<Self> {
        let node = Netns::create(&format!("{tag}-node"))?;
        node.ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        node.ok(&["ip", "addr", "add", "10.244.0.1/24", "dev", "br0"]);
        node.ok(&[
            "ip",
            "-6",
            "addr",
            "add",
            "fd00:244::1/64",
            "dev",
            "br0",
            "nodad",
        ]);
        node.ok(&["ip", "link", "set", "br0", "up"]);
        // The node routes, and virtual IPs lead nowhere: a connection that
        // escapes capture is refused at once (as it would fail in a
        // cluster), rather than waiting for a timeout.
        node.ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        node.ok(&["ip", "route", "add", "prohibit", "10.96.0.0/12"]);
        Some(Self {
            node,
            pods: Vec::new(),
        })
    }

    /// A pod at `10.244.0.<n>` (and `fd00:244::<n>`), `n` from 2; the
    /// cluster removes it.
    pub(crate) fn pod(&mut self, name: &str, n: u8) -> Netns {
        let pod = Netns::create(name).expect("root: the cluster was made");
        let peer = format!("vp{n}");
        self.node.ok(&[
            "ip", "link", "add", &peer, "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
        ]);
        self.node
            .ok(&["ip", "link", "set", &peer, "master", "br0", "up"]);
        pod.ok(&["ip", "link", "set", "eth0", "up"]);
        pod.ok(&[
            "ip",
            "addr",
            "add",
            &format!("10.244.0.{n}/24"),
            "dev",
            "eth0",
        ]);
        pod.ok(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("fd00:244::{n}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        pod.ok(&["ip", "route", "add", "default", "via", "10.244.0.1"]);
        pod.ok(&["ip", "-6", "route", "add", "default", "via", "fd00:244::1"]);
        let handle = Netns {
            name: pod.name.clone(),
            owned: false,
        };
        self.pods.push(pod);
        handle
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Pods first: their veths go with them; then the node.
        self.pods.clear();
    }
}

/// A process running in a namespace; killed (and reaped) on drop.
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) child: std::process::Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Netns {
    /// Starts `argv` in the namespace as `uid`/`gid` (root when `None`),
    /// its output to `log`.
    pub(crate) fn spawn_as(
        &self,
        ids: Option<(u32, u32)>,
        argv: &[&str],
        log: &std::path::Path,
    ) -> Running {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]);
        let (u, g);
        if let Some((uid, gid)) = ids {
            u = uid.to_string();
            g = gid.to_string();
            cmd.args(["setpriv", "--reuid", &u, "--regid", &g, "--clear-groups"]);
        }
        cmd.args(argv).stdout(out).stderr(err);
        Running {
            child: cmd.spawn().expect("spawn in the namespace"),
        }
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
