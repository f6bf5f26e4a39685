//! `mesh-proxy init`: the capture rules of a workload's network namespace,
//! as `istio-init` installs them, so that the application joins the mesh
//! unchanged.
//!
//! One choice of mechanism: **nftables** (the `nft` program), one table of
//! our own, `inet mesh`, for IPv4 and IPv6 at once. Every distribution we
//! target ships nftables, and iptables itself is a front end to it there
//! (iptables-nft); owning one table means installing is one atomic
//! transaction that replaces the table whole (so running `init` twice gives
//! the same rules) and removing is deleting it.
//!
//! What is captured, as Istio does it:
//!
//! - **Inbound** (hook `prerouting`): TCP arriving at the namespace is
//!   redirected to the inbound capture port (15006), except the excluded
//!   inbound ports (and the proxy's own ports, which are always excluded).
//! - **Outbound** (hook `output`): TCP the namespace opens is redirected to
//!   the outbound capture port (15001), except the proxy's own traffic (its
//!   uid and gid, so that its upstream connections are never captured
//!   again), loopback traffic between the application and itself, the
//!   excluded outbound ports, the excluded ranges, and, when include ranges
//!   are given, everything outside them.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::Args;
use mesh_core::net::IpBlock;

/// The table the rules live in: ours alone.
pub(crate) const TABLE: &str = "mesh";

/// `mesh-proxy init`.
#[derive(Debug, Clone, Args)]
pub(crate) struct InitArgs {
    /// The uid the proxy runs as: its own connections are not captured.
    #[arg(long, default_value_t = 1337)]
    pub(crate) proxy_uid: u32,
    /// The gid the proxy runs as: its own connections are not captured.
    #[arg(long, default_value_t = 1337)]
    pub(crate) proxy_gid: u32,
    /// Where inbound TCP is redirected: the sidecar's inbound capture port.
    #[arg(long, default_value_t = 15006)]
    pub(crate) inbound_capture_port: u16,
    /// Where outbound TCP is redirected: the sidecar's outbound capture
    /// port.
    #[arg(long, default_value_t = 15001)]
    pub(crate) outbound_capture_port: u16,
    /// The proxy's own ports (admin, readiness, metrics): never captured
    /// inbound. Comma-separated.
    #[arg(long, default_value = "15000,15020,15021,15090", value_parser = ports)]
    pub(crate) proxy_ports: Ports,
    /// Inbound ports not captured (Istio's `excludeInboundPorts`),
    /// comma-separated.
    #[arg(long, default_value = "", value_parser = ports)]
    pub(crate) exclude_inbound_ports: Ports,
    /// Outbound ports not captured (Istio's `excludeOutboundPorts`),
    /// comma-separated.
    #[arg(long, default_value = "", value_parser = ports)]
    pub(crate) exclude_outbound_ports: Ports,
    /// Outbound destinations not captured (Istio's
    /// `excludeOutboundIPRanges`), comma-separated CIDRs, IPv4 or IPv6.
    #[arg(long = "exclude-outbound-ip-ranges", default_value = "", value_parser = ranges)]
    pub(crate) exclude_outbound_ip_ranges: Ranges,
    /// Outbound destinations captured (Istio's `includeOutboundIPRanges`):
    /// `*` for all (the default), or comma-separated CIDRs; an empty value
    /// captures nothing outbound.
    #[arg(long = "include-outbound-ip-ranges", default_value = "*", value_parser = include)]
    pub(crate) include_outbound_ip_ranges: Include,
    /// Print the rules and the commands instead of installing them.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Remove the rules (the table `inet mesh`) instead of installing them.
    #[arg(long)]
    pub(crate) remove: bool,
    /// Install even when another tool's NAT rules are in this namespace.
    #[arg(long)]
    pub(crate) force: bool,
}

/// A list of ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Ports(pub(crate) Vec<u16>);

/// A list of CIDRs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Ranges(pub(crate) Vec<IpBlock>);

/// `includeOutboundIPRanges`: all, or these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Include {
    /// `*`.
    All,
    /// Only these (none: nothing captured outbound).
    Only(Ranges),
}

fn ports(s: &str) -> Result<Ports, String> {
    let mut out = Vec::new();
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let n: u16 = p
            .parse()
            .map_err(|_| format!("{p:?} is not a port (1-65535)"))?;
        if n == 0 {
            return Err("port 0 is not a port".into());
        }
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(Ports(out))
}

fn cidr(s: &str) -> Result<IpBlock, String> {
    IpBlock::parse(s).ok_or_else(|| {
        let max = if s.contains(':') { 128 } else { 32 };
        if s.split_once('/')
            .is_some_and(|(a, _)| a.parse::<IpAddr>().is_ok())
        {
            format!("{s:?}: the prefix length must be 0-{max}")
        } else {
            format!("{s:?} is not an address range (a CIDR such as 10.0.0.0/8)")
        }
    })
}

fn ranges(s: &str) -> Result<Ranges, String> {
    s.split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(cidr)
        .collect::<Result<_, _>>()
        .map(Ranges)
}

fn include(s: &str) -> Result<Include, String> {
    if s.trim() == "*" {
        Ok(Include::All)
    } else {
        ranges(s).map(Include::Only)
    }
}

/// An nftables set of ports, `{ 1, 2 }`.
fn port_set(p: &[u16]) -> String {
    let items: Vec<String> = p.iter().map(u16::to_string).collect();
    format!("{{ {} }}", items.join(", "))
}

/// The rules of `ip` (IPv4) or `ip6` matching any of `ranges`, or `None`
/// when none is of that family.
fn addr_set(ranges: &[IpBlock], v4: bool) -> Option<String> {
    let items: Vec<String> = ranges
        .iter()
        .filter(|c| c.addr().is_ipv4() == v4)
        .map(IpBlock::to_string)
        .collect();
    (!items.is_empty()).then(|| format!("{{ {} }}", items.join(", ")))
}

impl InitArgs {
    /// The nftables script that installs the rules: one transaction that
    /// creates the table (if absent), deletes it, and creates it whole, so
    /// that installing twice leaves the same rules.
    pub(crate) fn script(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "table inet {TABLE}");
        let _ = writeln!(s, "delete table inet {TABLE}");
        let _ = writeln!(s, "table inet {TABLE} {{");

        // Inbound.
        let _ = writeln!(s, "  chain prerouting {{");
        let _ = writeln!(
            s,
            "    type nat hook prerouting priority -100; policy accept;"
        );
        let _ = writeln!(s, "    meta l4proto != tcp return");
        let mut skip: Vec<u16> = self.proxy_ports.0.clone();
        skip.extend(&self.exclude_inbound_ports.0);
        skip.push(self.inbound_capture_port);
        skip.push(self.outbound_capture_port);
        skip.sort_unstable();
        skip.dedup();
        let _ = writeln!(s, "    tcp dport {} return", port_set(&skip));
        let _ = writeln!(
            s,
            "    meta l4proto tcp redirect to :{}",
            self.inbound_capture_port
        );
        let _ = writeln!(s, "  }}");

        // Outbound.
        let _ = writeln!(s, "  chain output {{");
        let _ = writeln!(s, "    type nat hook output priority -100; policy accept;");
        let _ = writeln!(s, "    meta l4proto != tcp return");
        // The proxy's own connections, upstream and to the app.
        let _ = writeln!(s, "    meta skuid {} return", self.proxy_uid);
        let _ = writeln!(s, "    meta skgid {} return", self.proxy_gid);
        // The application talking to itself (its own address included,
        // which the kernel routes over loopback).
        let _ = writeln!(s, "    oifname \"lo\" return");
        let _ = writeln!(s, "    ip daddr 127.0.0.0/8 return");
        let _ = writeln!(s, "    ip6 daddr ::1 return");
        if !self.exclude_outbound_ports.0.is_empty() {
            let _ = writeln!(
                s,
                "    tcp dport {} return",
                port_set(&self.exclude_outbound_ports.0)
            );
        }
        let ex = &self.exclude_outbound_ip_ranges.0;
        if let Some(v4) = addr_set(ex, true) {
            let _ = writeln!(s, "    ip daddr {v4} return");
        }
        if let Some(v6) = addr_set(ex, false) {
            let _ = writeln!(s, "    ip6 daddr {v6} return");
        }
        let port = self.outbound_capture_port;
        match &self.include_outbound_ip_ranges {
            Include::All => {
                let _ = writeln!(s, "    meta l4proto tcp redirect to :{port}");
            }
            Include::Only(r) => {
                if let Some(v4) = addr_set(&r.0, true) {
                    let _ = writeln!(s, "    ip daddr {v4} meta l4proto tcp redirect to :{port}");
                }
                if let Some(v6) = addr_set(&r.0, false) {
                    let _ = writeln!(s, "    ip6 daddr {v6} meta l4proto tcp redirect to :{port}");
                }
            }
        }
        let _ = writeln!(s, "  }}");
        let _ = writeln!(s, "}}");
        s
    }
}

/// The script that removes the rules; removing when there are none is not
/// an error.
pub(crate) fn remove_script() -> String {
    format!("table inet {TABLE}\ndelete table inet {TABLE}\n")
}

/// Runs `mesh-proxy init`.
pub(crate) fn run(args: &InitArgs) -> Result<()> {
    let script = if args.remove {
        remove_script()
    } else {
        args.script()
    };
    if args.dry_run {
        println!("# nft -f - <<'EOF'");
        print!("{script}");
        println!("# EOF");
        return Ok(());
    }
    require_net_admin()?;
    if !args.remove && !args.force {
        let foreign = foreign_nat_rules()?;
        if !foreign.is_empty() {
            bail!(
                "another tool's NAT rules are in this network namespace, so the mesh's capture \
                 would fight them; nothing was changed (pass --force to install anyway):\n  {}",
                foreign.join("\n  ")
            );
        }
    }
    nft(&["-f", "-"], Some(&script))
        .with_context(|| format!("installing the capture rules (table inet {TABLE})"))?;
    if args.remove {
        eprintln!("mesh-proxy init: removed table inet {TABLE}");
    } else {
        eprintln!(
            "mesh-proxy init: TCP inbound to :{} and outbound to :{} (table inet {TABLE}; proxy uid {} gid {} not captured)",
            args.inbound_capture_port, args.outbound_capture_port, args.proxy_uid, args.proxy_gid
        );
    }
    Ok(())
}

/// Fails, naming the capability, when this process cannot change the
/// namespace's firewall.
fn require_net_admin() -> Result<()> {
    const CAP_NET_ADMIN: u32 = 12;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok());
    match eff {
        Some(caps) if caps & (1 << CAP_NET_ADMIN) == 0 => bail!(
            "mesh-proxy init needs the CAP_NET_ADMIN capability in this network namespace \
             (run it as root, or as istio-init runs, with NET_ADMIN); nothing was changed"
        ),
        _ => Ok(()),
    }
}

/// Rules of other tables hooked into NAT where ours are: `table family
/// name chain C: N rules`.
fn foreign_nat_rules() -> Result<Vec<String>> {
    let out = nft(&["-j", "list", "ruleset"], None).context("reading the ruleset")?;
    let json: serde_json::Value =
        serde_json::from_str(&out).context("reading `nft -j list ruleset`")?;
    let items = json
        .get("nftables")
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default();
    let mut nat_chains: Vec<(String, String, String)> = Vec::new();
    for it in &items {
        if let Some(c) = it.get("chain") {
            let s = |k: &str| c.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
            let hooked = matches!(s("hook").as_str(), "prerouting" | "output");
            let ours = s("table") == TABLE && s("family") == "inet";
            if s("type") == "nat" && hooked && !ours {
                nat_chains.push((s("family"), s("table"), s("name")));
            }
        }
    }
    let mut found = Vec::new();
    for (family, table, chain) in nat_chains {
        let n = items
            .iter()
            .filter_map(|it| it.get("rule"))
            .filter(|r| {
                let s = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("");
                s("family") == family && s("table") == table && s("chain") == chain
            })
            .count();
        if n > 0 {
            found.push(format!("table {family} {table} chain {chain}: {n} rules"));
        }
    }
    Ok(found)
}

/// Runs `nft` with `args`, feeding it `stdin`; its error output becomes
/// the error.
fn nft(args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::io::Write as _;
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running `nft` (install the nftables package)")?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .context("writing the rules to nft")?;
    }
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("Operation not permitted") {
            bail!(
                "nft: Operation not permitted: mesh-proxy init needs the CAP_NET_ADMIN capability \
                 in this network namespace; nothing was changed"
            );
        }
        bail!("nft {}: {}", args.join(" "), err.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        init: InitArgs,
    }

    fn args(flags: &[&str]) -> Result<InitArgs, clap::Error> {
        let mut argv = vec!["init"];
        argv.extend_from_slice(flags);
        Cli::try_parse_from(argv).map(|c| c.init)
    }

    #[test]
    fn the_defaults_capture_all_tcp_but_the_proxys_own() {
        let s = args(&[]).unwrap().script();
        assert!(s.starts_with("table inet mesh\ndelete table inet mesh\ntable inet mesh {\n"));
        assert!(s.contains("tcp dport { 15000, 15001, 15006, 15020, 15021, 15090 } return"));
        assert!(s.contains("meta l4proto tcp redirect to :15006"));
        assert!(s.contains("meta skuid 1337 return"));
        assert!(s.contains("meta skgid 1337 return"));
        assert!(s.contains("oifname \"lo\" return"));
        assert!(s.contains("    meta l4proto tcp redirect to :15001\n"));
        // The proxy's exemption comes before the redirect.
        assert!(s.find("skuid").unwrap() < s.find("redirect to :15001").unwrap());
    }

    #[test]
    fn istios_exclusions_and_inclusions_by_their_names() {
        let a = args(&[
            "--exclude-inbound-ports",
            "22,8080",
            "--exclude-outbound-ports",
            "5432",
            "--exclude-outbound-ip-ranges",
            "169.254.169.254/32,fd00::/8",
            "--include-outbound-ip-ranges",
            "10.0.0.0/8,2001:db8::/32",
        ])
        .unwrap();
        let s = a.script();
        assert!(
            s.contains("tcp dport { 22, 8080, 15000, 15001, 15006, 15020, 15021, 15090 } return")
        );
        assert!(s.contains("tcp dport { 5432 } return"));
        assert!(s.contains("ip daddr { 169.254.169.254/32 } return"));
        assert!(s.contains("ip6 daddr { fd00::/8 } return"));
        assert!(s.contains("ip daddr { 10.0.0.0/8 } meta l4proto tcp redirect to :15001"));
        assert!(s.contains("ip6 daddr { 2001:db8::/32 } meta l4proto tcp redirect to :15001"));
        assert!(!s.contains("    meta l4proto tcp redirect to :15001\n"));
        // Exclusions are read before inclusions, as Istio's.
        assert!(s.find("169.254").unwrap() < s.find("10.0.0.0/8").unwrap());
    }

    #[test]
    fn an_empty_include_captures_nothing_outbound() {
        let s = args(&["--include-outbound-ip-ranges", ""])
            .unwrap()
            .script();
        assert!(!s.contains("redirect to :15001"));
        assert!(s.contains("redirect to :15006"));
    }

    #[test]
    fn bad_values_are_refused_by_flag() {
        for (flag, value, why) in [
            ("--exclude-inbound-ports", "22,http", "is not a port"),
            ("--exclude-inbound-ports", "0", "port 0"),
            ("--exclude-outbound-ports", "70000", "is not a port"),
            (
                "--exclude-outbound-ip-ranges",
                "10.0.0.0/33",
                "prefix length must be 0-32",
            ),
            ("--include-outbound-ip-ranges", "fd00::/129", "0-128"),
            (
                "--include-outbound-ip-ranges",
                "mysql",
                "not an address range",
            ),
        ] {
            let e = args(&[flag, value]).unwrap_err().to_string();
            assert!(e.contains(flag) && e.contains(why), "{flag} {value}: {e}");
        }
    }

    #[test]
    fn removing_is_deleting_our_table_only() {
        assert_eq!(remove_script(), "table inet mesh\ndelete table inet mesh\n");
    }
}
