//! The system under test's processes: started pinned to their core with
//! `taskset`, measured from /proc, stopped when dropped.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// A process of the system under test (with its children: nginx's workers).
#[derive(Debug)]
pub(crate) struct Proc {
    pub(crate) name: String,
    child: Child,
}

impl Proc {
    /// Runs `program args` on `core` (none: unpinned), output to
    /// `log_dir/name.log`.
    pub(crate) fn spawn(
        name: &str,
        core: Option<usize>,
        program: &Path,
        args: &[String],
        envs: &[(&str, &str)],
        log_dir: &Path,
    ) -> Result<Self> {
        Self::spawn_under(name, core, &[], program, args, envs, log_dir)
    }

    /// The same, with `program` run by `under` (a command line that execs
    /// what follows it, as `ip netns exec NS setpriv ...` does, so the pid
    /// measured is the program's own).
    pub(crate) fn spawn_under(
        name: &str,
        core: Option<usize>,
        under: &[String],
        program: &Path,
        args: &[String],
        envs: &[(&str, &str)],
        log_dir: &Path,
    ) -> Result<Self> {
        let log = File::create(log_dir.join(format!("{name}.log")))?;
        let mut line: Vec<std::ffi::OsString> = under.iter().map(Into::into).collect();
        line.push(program.into());
        let mut cmd = match core {
            Some(core) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(core.to_string()).args(&line);
                c
            }
            None => {
                let mut c = Command::new(&line[0]);
                c.args(&line[1..]);
                c
            }
        };
        cmd.args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {}", program.display()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has exited.
    pub(crate) fn check_alive(&mut self, log_dir: &Path) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(log_dir.join(format!("{}.log", self.name)))
                .unwrap_or_default();
            bail!("{} exited ({status}):\n{log}", self.name);
        }
        Ok(())
    }

    /// The process and its descendants.
    fn tree(&self) -> Vec<u32> {
        let mut pids = vec![self.pid()];
        let mut i = 0;
        while i < pids.len() {
            pids.extend(children(pids[i]));
            i += 1;
        }
        pids
    }

    /// CPU time used so far (user + system), all of the tree.
    pub(crate) fn cpu_seconds(&self) -> f64 {
        let ticks: u64 = self.tree().into_iter().filter_map(cpu_ticks).sum();
        ticks as f64 / clock_ticks() as f64
    }

    /// Resident memory now, summed over the tree, in KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        self.tree().into_iter().filter_map(rss_kib).sum()
    }

    /// The anonymous part of [`Proc::rss_kib`] (`RssAnon`: heap, stacks,
    /// buffers), in KiB. The rest is file pages, mostly the program's own
    /// code, which every process of one binary shares in the page cache:
    /// the idle figure is mostly that (BENCHMARKS.md, "Idle memory").
    pub(crate) fn rss_anon_kib(&self) -> u64 {
        self.tree()
            .into_iter()
            .filter_map(|pid| status_kib(pid, "RssAnon"))
            .sum()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // TERM first so that nginx's master takes its workers down with it.
        let tree = self.tree();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .stderr(Stdio::null())
            .status();
        for _ in 0..40 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in tree.into_iter().skip(1) {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// CPU time this process (the load generator) has used.
pub(crate) fn own_cpu_seconds() -> f64 {
    cpu_ticks(std::process::id()).unwrap_or(0) as f64 / clock_ticks() as f64
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            // Field 4 of stat, the parent, is the second after the name.
            stat_fields(*p).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(pid)
        })
        .collect()
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after the name.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// A memory figure of `/proc/PID/status` (`VmRSS`, `VmHWM`, ...), KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// This process's resident memory, MiB: now, and at its peak (`VmHWM`).
pub(crate) fn own_rss_mib() -> (f64, f64) {
    let id = std::process::id();
    let mib = |f| status_kib(id, f).unwrap_or(0) as f64 / 1024.0;
    (mib("VmRSS"), mib("VmHWM"))
}

/// USER_HZ, from `getconf` (100 on Linux everywhere in practice).
fn clock_ticks() -> u64 {
    static HZ: OnceLock<u64> = OnceLock::new();
    *HZ.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// Free loopback ports, all held until every one is chosen.
pub(crate) fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Waits until something accepts on `port`.
pub(crate) async fn wait_for_port(port: u16, procs: &mut [Proc], log_dir: &Path) -> Result<()> {
    // Long enough for a sidecar started under valgrind.
    for _ in 0..1200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        for p in procs.iter_mut() {
            p.check_alive(log_dir)?;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nothing listens on port {port} after 60 s")
}
