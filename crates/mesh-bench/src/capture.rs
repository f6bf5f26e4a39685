//! (d-capture): topology (d) with both sidecars in transparent capture mode,
//! as pods run them.
//!
//! Three network namespaces: a "node" holding a bridge (`10.249.0.1/24`),
//! pod A (`10.249.0.2`: the load generator and sidecar A) and pod B
//! (`10.249.0.3`: sidecar B and the app, which listens on the pod's own
//! address, port 8080), each pod with an `eth0` on the bridge and its
//! default route through the node. `mesh-proxy init` installs the capture
//! rules in each pod, and each sidecar runs `--capture` as uid 1337, as the
//! capture tests and the WordPress canary run them. The client dials the
//! service's virtual IP (`10.249.1.10:80`, the ServiceEntry's `addresses`)
//! as an unchanged app would; the node refuses the virtual IPs' range, so a
//! request is only answered if it was captured. Nothing is added to the
//! host's own network namespace, so the addresses cannot meet the capture
//! tests' (`10.244.0.0/24`, inside their own namespaces) or the canary's
//! (`10.248.0.0/24` on the host's `mesh-br0`), nor another run of this
//! harness.
//!
//! The namespaces are named `mesh-bench-<pid>-*` and removed, rules first,
//! when the topology stops, also on error or ctrl-c ([`Pods`] is a guard;
//! `main` turns SIGINT and SIGTERM into an orderly stop), and namespaces
//! left by a run that was killed outright are removed by the next one.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::certs::{CLIENT_SA, Certs, IdentityFiles, SERVER_SA};
use crate::load::Generator;
use crate::pod_load::PodClient;
use crate::procs::Proc;
use crate::topo::{MeshLayout, Programs, Running, write_mesh_config_for};

/// Every namespace this harness makes starts with this.
const PREFIX: &str = "mesh-bench-";
const NODE: Ipv4Addr = Ipv4Addr::new(10, 249, 0, 1);
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 249, 0, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 249, 0, 3);
/// The service's virtual IP, in a range the node refuses.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 249, 1, 10);
const VIP_RANGE: &str = "10.249.1.0/24";
const SERVICE_PORT: u16 = 80;
const APP_PORT: u16 = 8080;
/// The proxy's uid and gid, which `mesh-proxy init`'s rules let through.
const PROXY_UID: u32 = 1337;

/// Why (d-capture) cannot run here, if it cannot.
pub(crate) fn unavailable() -> Option<String> {
    if !is_root() {
        return Some(
            "needs root (network namespaces, nftables, sidecars as uid 1337); \
             run the harness as root to measure it"
                .to_owned(),
        );
    }
    for (program, package) in [
        ("nft", "nftables"),
        ("ip", "iproute2"),
        ("setpriv", "util-linux"),
    ] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {program}"))
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("needs `{program}` (apt-get install {package})"));
        }
    }
    None
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|u| u.split_whitespace().next().map(|x| x == "0"))
        })
        .unwrap_or(false)
}

/// Runs `program args`; fails with its error output.
fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The node and the two pods. Dropping it removes each pod's capture rules
/// (`mesh-proxy init --remove`), then every namespace, which takes the
/// veths and the bridge with it. Drop it after the processes in them.
#[derive(Debug)]
pub(crate) struct Pods {
    node: String,
    a: String,
    b: String,
    mesh_proxy: PathBuf,
    /// The namespaces made so far, in order.
    made: Vec<String>,
}

impl Pods {
    fn create(mesh_proxy: &Path) -> Result<Self> {
        remove_stale();
        let name = |tag: &str| format!("{PREFIX}{}-{tag}", std::process::id());
        // The guard exists before the first namespace: a failure half-way
        // removes what was made.
        let mut pods = Self {
            node: name("node"),
            a: name("a"),
            b: name("b"),
            mesh_proxy: mesh_proxy.to_owned(),
            made: Vec::new(),
        };
        let node = pods.node.clone();
        pods.add(&node)?;
        let nip = |args: &[&str]| {
            let mut all = vec!["-n", node.as_str()];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        nip(&["link", "add", "br0", "type", "bridge"])?;
        nip(&["addr", "add", &format!("{NODE}/24"), "dev", "br0"])?;
        nip(&["link", "set", "br0", "up"])?;
        // A virtual IP that escaped capture is refused at once rather than
        // left to time out.
        run(
            "ip",
            &[
                "netns",
                "exec",
                &node,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        )?;
        nip(&["route", "add", "prohibit", VIP_RANGE])?;
        for (pod, addr, veth) in [(pods.a.clone(), POD_A, "va"), (pods.b.clone(), POD_B, "vb")] {
            pods.add(&pod)?;
            nip(&[
                "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", &pod,
            ])?;
            nip(&["link", "set", veth, "master", "br0", "up"])?;
            run("ip", &["-n", &pod, "link", "set", "eth0", "up"])?;
            run(
                "ip",
                &[
                    "-n",
                    &pod,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    "eth0",
                ],
            )?;
            run(
                "ip",
                &[
                    "-n",
                    &pod,
                    "route",
                    "add",
                    "default",
                    "via",
                    &NODE.to_string(),
                ],
            )?;
        }
        Ok(pods)
    }

    /// A namespace with loopback up.
    fn add(&mut self, name: &str) -> Result<()> {
        run("ip", &["netns", "add", name])?;
        self.made.push(name.to_owned());
        run("ip", &["-n", name, "link", "set", "lo", "up"])
    }

    /// `mesh-proxy init` in `pod`.
    fn init(&self, pod: &str) -> Result<()> {
        let proxy = self.mesh_proxy.display().to_string();
        run("ip", &["netns", "exec", pod, &proxy, "init"])
            .with_context(|| format!("installing the capture rules in {pod}"))
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        let proxy = self.mesh_proxy.display().to_string();
        for ns in self.made.iter().rev() {
            if *ns != self.node {
                let _ = run("ip", &["netns", "exec", ns, &proxy, "init", "--remove"]);
            }
            if let Err(e) = run("ip", &["netns", "del", ns]) {
                eprintln!("warning: could not remove network namespace {ns}: {e:#}");
            }
        }
    }
}

/// Removes the namespaces of runs of this harness that are no longer
/// running (killed before their guard could act).
fn remove_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing network namespace {name} left by an earlier run");
            let _ = run("ip", &["netns", "del", &name]);
        }
    }
}

/// Copies an identity into `dir`, its key owned by the proxy's uid (the
/// sidecars read it as 1337; the shared copy stays root's).
fn identity_for_proxy(files: &IdentityFiles, dir: &Path) -> Result<IdentityFiles> {
    std::fs::create_dir_all(dir)?;
    let copy = |from: &Path, name: &str| -> Result<PathBuf> {
        let to = dir.join(name);
        std::fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
        Ok(to)
    };
    let out = IdentityFiles {
        cert: copy(&files.cert, "cert.pem")?,
        key: copy(&files.key, "key.pem")?,
        bundle: copy(&files.bundle, "bundle.pem")?,
        combined: PathBuf::new(),
    };
    std::os::unix::fs::chown(&out.key, Some(PROXY_UID), Some(PROXY_UID))?;
    Ok(out)
}

fn s(x: impl ToString) -> String {
    x.to_string()
}

/// Starts (d-capture) with its processes on `core`; the load generator
/// runs inside pod A.
pub(crate) async fn start(
    programs: &Programs,
    certs: &Certs,
    dir: &Path,
    core: Option<usize>,
) -> Result<Running> {
    use std::os::unix::fs::PermissionsExt;
    if programs.sidecar_wrapper.is_some() {
        bail!("--sidecar-wrapper is for (c) and (d), not (d-capture)");
    }
    if let Some(why) = unavailable() {
        bail!("{why}");
    }
    // The sidecars, as uid 1337, read their configuration and keys from
    // here: the run's folder is opened for traversal only.
    if let Some(work) = dir.parent() {
        std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o711))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let config = dir.join("mesh");
    write_mesh_config_for(
        &config,
        &MeshLayout {
            vip: Some(VIP),
            server: (POD_B, APP_PORT),
            client: POD_A,
            client_port: None,
            h2_upgrade: false,
        },
    )?;
    let client_id = identity_for_proxy(&certs.client, &dir.join(CLIENT_SA))?;
    let server_id = identity_for_proxy(&certs.server, &dir.join(SERVER_SA))?;

    let pods = Pods::create(&programs.mesh_proxy)?;
    pods.init(&pods.a)?;
    pods.init(&pods.b)?;
    let in_pod = |pod: &str| ["ip", "netns", "exec", pod].map(s).to_vec();
    let app = Proc::spawn_under(
        "app",
        core,
        &in_pod(&pods.b),
        &programs.bench,
        &[
            s("serve"),
            s("--mode"),
            s("plain"),
            s("--listen"),
            s(SocketAddrV4::new(POD_B, APP_PORT)),
        ],
        &[],
        dir,
    )?;
    let sidecar = |name: &str, pod: &str, workload: &str, id: &IdentityFiles| {
        let mut under = in_pod(pod);
        let uid = PROXY_UID.to_string();
        under.extend([
            s("setpriv"),
            s("--reuid"),
            uid.clone(),
            s("--regid"),
            uid,
            s("--clear-groups"),
        ]);
        let args = [
            s("sidecar"),
            s("--capture"),
            s("--config"),
            s(config.display()),
            s("--workload"),
            s(workload),
            s("--drain-timeout"),
            s(1),
            s("--cert"),
            s(id.cert.display()),
            s("--key"),
            s(id.key.display()),
            s("--bundle"),
            s(id.bundle.display()),
        ];
        // Access log off: it is an `info` event.
        Proc::spawn_under(
            name,
            core,
            &under,
            &programs.mesh_proxy,
            &args,
            &[("RUST_LOG", "warn")],
            dir,
        )
    };
    let b = sidecar("sidecar-b", &pods.b, SERVER_SA, &server_id)?;
    let a = sidecar("sidecar-a", &pods.a, CLIENT_SA, &client_id)?;
    let mut procs = vec![a, b, app];

    let load = PodClient {
        netns: pods.a.clone(),
        bench: programs.bench.clone(),
        connect: SocketAddr::from((VIP, SERVICE_PORT)),
        identity: None,
    };
    // One request through, tried until every process is up: it can only
    // be answered if it was captured (the node refuses the virtual IP).
    let ready = {
        let first = load.once(Duration::from_secs(60));
        tokio::pin!(first);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                r = &mut first => break r,
                _ = tick.tick() => {
                    for p in procs.iter_mut() {
                        p.check_alive(dir)?;
                    }
                }
            }
        }
    };
    if let Err(e) = ready {
        let logs: Vec<String> = procs
            .iter()
            .map(|p| {
                let log = std::fs::read_to_string(dir.join(format!("{}.log", p.name)))
                    .unwrap_or_default();
                format!("--- {}\n{log}", p.name)
            })
            .collect();
        return Err(anyhow!(
            "topology d-capture: the first request failed: {e:#}\n{}",
            logs.join("\n")
        ));
    }
    // Idle mTLS connections from the node, which has no capture rules, to
    // the app's port: pod B's rules send them to sidecar B's inbound.
    let idle = PodClient {
        netns: pods.node.clone(),
        bench: programs.bench.clone(),
        connect: SocketAddr::from((POD_B, APP_PORT)),
        identity: Some(certs.client.clone()),
    };
    Ok(Running {
        load: Generator::InPod(load),
        mtls_server: Some((Generator::InPod(idle), 1)),
        procs,
        pods: Some(pods),
    })
}
