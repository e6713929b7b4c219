//! Network faults between real processes, with iptables: every process of
//! a [`crate::process::ProcSystem`] has its own loopback IP and sends from
//! it, so a rule matching source and destination addresses cuts exactly
//! one direction of one link, as a broken cable or a firewall would (TCP
//! sees silence, not a reset). Rules live in a chain of their own, jumped
//! to from `OUTPUT`, and are removed when this is dropped.
//!
//! Only loopback addresses this test chose (`127.77.x.y`) are ever matched.
//! Needs root and iptables; [`NetFaults::new`] says why when it cannot work
//! (tests then skip these faults, printing the reason). The kernel of this
//! machine kind has no `netem`, so delays are injected in the node's own
//! transport instead (`ravel_transport::Faults`).

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static CHAINS: AtomicU32 = AtomicU32::new(0);

/// One test's iptables chain.
#[derive(Debug)]
pub struct NetFaults {
    chain: String,
}

fn iptables(args: &[&str]) -> Result<(), String> {
    let out = Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run iptables: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetFaults {
    /// A fresh chain for this test, or the reason iptables cannot be used.
    pub fn new() -> Result<NetFaults, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: iptables needs CAP_NET_ADMIN".into());
        }
        remove_stale_chains();
        let chain = format!(
            "RAVEL-{}-{}",
            std::process::id(),
            CHAINS.fetch_add(1, Ordering::Relaxed)
        );
        iptables(&["-N", &chain])?;
        if let Err(e) = iptables(&["-I", "OUTPUT", "-j", &chain]) {
            let _ = iptables(&["-X", &chain]);
            return Err(e);
        }
        Ok(NetFaults { chain })
    }

    /// Drops every packet from `from` to `to` (one direction).
    pub fn cut(&self, from: Ipv4Addr, to: Ipv4Addr) -> Result<(), String> {
        iptables(&[
            "-A",
            &self.chain,
            "-s",
            &from.to_string(),
            "-d",
            &to.to_string(),
            "-j",
            "DROP",
        ])
    }

    /// Drops packets from `from` to `to` with probability `p`.
    pub fn lossy(&self, from: Ipv4Addr, to: Ipv4Addr, p: f64) -> Result<(), String> {
        iptables(&[
            "-A",
            &self.chain,
            "-s",
            &from.to_string(),
            "-d",
            &to.to_string(),
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &format!("{p:.3}"),
            "-j",
            "DROP",
        ])
    }

    /// Cuts `a` from `b` both ways.
    pub fn partition(&self, a: Ipv4Addr, b: Ipv4Addr) -> Result<(), String> {
        self.cut(a, b)?;
        self.cut(b, a)
    }

    /// Removes every rule.
    pub fn heal(&self) -> Result<(), String> {
        iptables(&["-F", &self.chain])
    }
}

impl Drop for NetFaults {
    fn drop(&mut self) {
        let _ = iptables(&["-D", "OUTPUT", "-j", &self.chain]);
        let _ = iptables(&["-F", &self.chain]);
        let _ = iptables(&["-X", &self.chain]);
    }
}

/// Removes chains left by test processes that died without cleaning up.
fn remove_stale_chains() {
    let Ok(out) = Command::new("iptables").args(["-w", "5", "-S"]).output() else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        let Some(chain) = line.strip_prefix("-N ") else {
            continue;
        };
        let Some(pid) = chain
            .strip_prefix("RAVEL-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists.
        if unsafe { libc::kill(pid, 0) } == 0 {
            continue;
        }
        let _ = iptables(&["-D", "OUTPUT", "-j", chain]);
        let _ = iptables(&["-F", chain]);
        let _ = iptables(&["-X", chain]);
    }
}
