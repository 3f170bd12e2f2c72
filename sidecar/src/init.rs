//! `breakwater-sidecar init`: nat-table rules that send a pod's TCP traffic through the proxy,
//! as linkerd2-proxy-init and istio-init do.
//!
//! - **Outbound**: every TCP connection the pod opens is redirected to the outbound listener,
//!   except the proxy's own (by UID — otherwise the proxy would loop into itself), loopback
//!   traffic, and any excluded ports or networks.
//! - **Inbound**: every TCP connection arriving at the pod is redirected to the inbound
//!   listener, except excluded ports (the admin port always).
//!
//! Rules live in our own chains, applied in one atomic batch with `iptables-restore
//! --noflush` (declaring a chain flushes it), so other rules in the table are untouched. A
//! second run compares `iptables-save` with the wanted rules and changes nothing when they
//! match. We drive the `iptables-restore`/`iptables-save` binaries rather than netlink: they
//! pick the kernel's backend (nft or legacy) and are what every mesh's init container uses.

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

/// Chain for inbound traffic (jumped to from PREROUTING).
pub const INBOUND_CHAIN: &str = "BREAKWATER_INBOUND";
/// Chain for outbound traffic (jumped to from OUTPUT).
pub const OUTBOUND_CHAIN: &str = "BREAKWATER_OUTBOUND";

/// What to redirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// The proxy's UID: its own connections are never redirected.
    pub proxy_uid: u32,
    /// The outbound listener's port.
    pub outbound_port: u16,
    /// The inbound listener's port.
    pub inbound_port: u16,
    /// Inbound ports never redirected (the admin port is always added).
    pub skip_inbound_ports: Vec<u16>,
    /// The admin port.
    pub admin_port: u16,
    /// Outbound destination ports never redirected.
    pub skip_outbound_ports: Vec<u16>,
    /// Outbound destination networks (CIDR) never redirected.
    pub skip_outbound_cidrs: Vec<String>,
    /// Redirect inbound traffic at all (off for a caller-only pod).
    pub inbound: bool,
}

/// IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `iptables`.
    V4,
    /// `ip6tables`.
    V6,
}

impl Family {
    fn save(self) -> &'static str {
        match self {
            Self::V4 => "iptables-save",
            Self::V6 => "ip6tables-save",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Self::V4 => "iptables-restore",
            Self::V6 => "ip6tables-restore",
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Self::V4 => "127.0.0.1/32",
            Self::V6 => "::1/128",
        }
    }
}

/// Why the rules could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A binary is missing or failed to start.
    #[error(
        "cannot run {cmd}: {source} (install the iptables package; the init container needs NET_ADMIN and NET_RAW)"
    )]
    Spawn {
        /// The command.
        cmd: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("{cmd} failed ({status}): {stderr}")]
    Failed {
        /// The command.
        cmd: &'static str,
        /// Exit status.
        status: std::process::ExitStatus,
        /// What it said.
        stderr: String,
    },
    /// An option is invalid.
    #[error("{0}")]
    Invalid(String),
}

impl InitOptions {
    /// Checks the options (a CIDR typo must not become a broken firewall).
    pub fn validate(&self) -> Result<(), InitError> {
        for cidr in &self.skip_outbound_cidrs {
            let (ip, len) = cidr.split_once('/').unwrap_or((cidr, ""));
            let ok_ip = ip.parse::<std::net::IpAddr>().is_ok();
            let ok_len = len.is_empty() || len.parse::<u8>().is_ok_and(|l| l <= 128);
            if !ok_ip || !ok_len {
                return Err(InitError::Invalid(format!(
                    "--skip-outbound-cidrs: {cidr:?} is not an IP network"
                )));
            }
        }
        if self.outbound_port == 0 || self.inbound_port == 0 {
            return Err(InitError::Invalid("listener ports must not be 0".into()));
        }
        Ok(())
    }

    /// The wanted rules for `family`, one per line, exactly as `iptables-save` prints them.
    pub fn rules(&self, family: Family) -> Vec<String> {
        let mut r = Vec::new();
        let ports = |p: &[u16]| p.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
        if self.inbound {
            let mut skip = vec![self.admin_port];
            skip.extend(&self.skip_inbound_ports);
            skip.sort_unstable();
            skip.dedup();
            // iptables' multiport takes at most 15 ports per rule.
            for chunk in skip.chunks(15) {
                r.push(format!("-A {INBOUND_CHAIN} -p tcp -m multiport --dports {} -j RETURN", ports(chunk)));
            }
            r.push(format!("-A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}", self.inbound_port));
        }
        r.push(format!("-A {OUTBOUND_CHAIN} -m owner --uid-owner {} -j RETURN", self.proxy_uid));
        r.push(format!("-A {OUTBOUND_CHAIN} -o lo -j RETURN"));
        r.push(format!("-A {OUTBOUND_CHAIN} -d {} -j RETURN", family.loopback()));
        for cidr in &self.skip_outbound_cidrs {
            let is_v6 = cidr.contains(':');
            if is_v6 == (family == Family::V6) {
                let full = if cidr.contains('/') {
                    cidr.clone()
                } else {
                    format!("{cidr}/{}", if is_v6 { 128 } else { 32 })
                };
                r.push(format!("-A {OUTBOUND_CHAIN} -d {full} -j RETURN"));
            }
        }
        let mut skip_out = self.skip_outbound_ports.clone();
        skip_out.sort_unstable();
        skip_out.dedup();
        for chunk in skip_out.chunks(15) {
            r.push(format!("-A {OUTBOUND_CHAIN} -p tcp -m multiport --dports {} -j RETURN", ports(chunk)));
        }
        r.push(format!("-A {OUTBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}", self.outbound_port));
        if self.inbound {
            r.push(format!("-A PREROUTING -j {INBOUND_CHAIN}"));
        }
        r.push(format!("-A OUTPUT -j {OUTBOUND_CHAIN}"));
        r
    }

    /// The `iptables-restore --noflush` input that installs [`InitOptions::rules`], given the
    /// current `iptables-save -t nat` output (whose jumps to our chains are removed first, so
    /// they never pile up).
    pub fn restore_input(&self, family: Family, current: &str) -> String {
        let mut out = String::from("*nat\n");
        if self.inbound {
            out.push_str(&format!(":{INBOUND_CHAIN} - [0:0]\n"));
        }
        out.push_str(&format!(":{OUTBOUND_CHAIN} - [0:0]\n"));
        for line in ours(current).into_iter().filter(|l| is_jump(l)) {
            out.push_str(&line.replacen("-A ", "-D ", 1));
            out.push('\n');
        }
        for rule in self.rules(family) {
            out.push_str(&rule);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
        out
    }
}

/// Our lines in an `iptables-save` dump: rules in our chains and jumps to them.
fn ours(save: &str) -> Vec<String> {
    save.lines()
        .filter(|l| {
            l.starts_with(&format!("-A {INBOUND_CHAIN} "))
                || l.starts_with(&format!("-A {OUTBOUND_CHAIN} "))
                || is_jump(l)
        })
        .map(str::to_owned)
        .collect()
}

fn is_jump(line: &str) -> bool {
    line == format!("-A PREROUTING -j {INBOUND_CHAIN}") || line == format!("-A OUTPUT -j {OUTBOUND_CHAIN}")
}

/// What [`apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The rules were already in place; nothing was touched.
    Unchanged,
    /// The rules were (re)written.
    Applied,
}

fn run(cmd: &'static str, args: &[&str], stdin: Option<&str>) -> Result<String, InitError> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| InitError::Spawn { cmd, source })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(|source| InitError::Spawn { cmd, source })?;
    }
    let out = child.wait_with_output().map_err(|source| InitError::Spawn { cmd, source })?;
    if !out.status.success() {
        return Err(InitError::Failed {
            cmd,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installs the rules for `family` unless they are already exactly in place.
pub fn apply(opts: &InitOptions, family: Family) -> Result<Outcome, InitError> {
    opts.validate()?;
    let current = run(family.save(), &["-t", "nat"], None)?;
    let mut have = ours(&current);
    let mut want = opts.rules(family);
    have.sort();
    want.sort();
    if have == want {
        return Ok(Outcome::Unchanged);
    }
    run(family.restore(), &["--noflush"], Some(&opts.restore_input(family, &current)))?;
    Ok(Outcome::Applied)
}

/// Whether `ip6tables-restore` is installed and the kernel has IPv6.
pub fn ipv6_available() -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
        && Command::new(Family::V6.save())
            .args(["-t", "nat"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> InitOptions {
        InitOptions {
            proxy_uid: 2102,
            outbound_port: 15001,
            inbound_port: 15006,
            skip_inbound_ports: vec![22],
            admin_port: 15000,
            skip_outbound_ports: vec![],
            skip_outbound_cidrs: vec!["198.18.5.0/24".into()],
            inbound: true,
        }
    }

    #[test]
    fn rules_exclude_the_proxy_loopback_and_admin() {
        let rules = opts().rules(Family::V4);
        assert!(rules.contains(&"-A BREAKWATER_OUTBOUND -m owner --uid-owner 2102 -j RETURN".to_owned()));
        assert!(rules.contains(&"-A BREAKWATER_OUTBOUND -o lo -j RETURN".to_owned()));
        assert!(
            rules.contains(
                &"-A BREAKWATER_INBOUND -p tcp -m multiport --dports 22,15000 -j RETURN".to_owned()
            )
        );
        assert!(rules.contains(&"-A BREAKWATER_OUTBOUND -d 198.18.5.0/24 -j RETURN".to_owned()));
        assert_eq!(rules.last().map(String::as_str), Some("-A OUTPUT -j BREAKWATER_OUTBOUND"));
        // The redirect comes after every exclusion.
        let redirect = rules.iter().position(|r| r.contains("REDIRECT --to-ports 15001")).expect("redirect");
        let uid = rules.iter().position(|r| r.contains("uid-owner")).expect("uid rule");
        assert!(uid < redirect);
        assert!(opts().rules(Family::V6).iter().all(|r| !r.contains("198.18.5.0")));
    }

    #[test]
    fn restore_input_replaces_existing_jumps() {
        let current =
            "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j BREAKWATER_OUTBOUND\n-A OUTPUT -j OTHER\nCOMMIT\n";
        let input = opts().restore_input(Family::V4, current);
        assert!(input.contains("-D OUTPUT -j BREAKWATER_OUTBOUND\n"));
        assert!(!input.contains("OTHER"), "other rules are left alone");
        assert!(input.starts_with("*nat\n:BREAKWATER_INBOUND - [0:0]\n"));
        assert!(input.ends_with("COMMIT\n"));
    }

    #[test]
    fn invalid_cidr_is_refused() {
        let o = InitOptions { skip_outbound_cidrs: vec!["198.18.0.0/99x".into()], ..opts() };
        assert!(o.validate().is_err());
    }
}
