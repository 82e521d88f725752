//! Listening sockets bound by `cutover-sandbox up` and inherited by `cutover-sandbox serve`.
//!
//! A port chosen early and bound later can be taken in between (by another sandbox, or as the
//! ephemeral port of any outgoing connection): the parent binds every socket the serve process
//! needs, clears close-on-exec on them, and names their descriptors in [`FDS_VAR`]. The child
//! adopts them, so a port in the sandbox's state is always the one that is listening.

use anyhow::{anyhow, Context, Result};
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Environment variable naming the inherited descriptors: `name=fd` pairs joined by `,`, names
/// `legacy`, `kube:<env>`, `app:<env>`.
pub const FDS_VAR: &str = "CUTOVER_SANDBOX_LISTEN_FDS";

/// The serve process's listening sockets, by name.
pub struct Listeners {
    by_name: BTreeMap<String, TcpListener>,
}

impl Listeners {
    /// Binds one socket on 127.0.0.1 (a free port) for the legacy app, and one for each
    /// environment's Kubernetes API and AWS-side app.
    pub fn bind(envs: &[&str]) -> Result<Self> {
        let mut names = vec!["legacy".to_string()];
        for env in envs {
            names.push(format!("kube:{env}"));
            names.push(format!("app:{env}"));
        }
        let mut by_name = BTreeMap::new();
        for name in names {
            let l = TcpListener::bind("127.0.0.1:0")
                .with_context(|| format!("cannot bind a socket for {name}"))?;
            by_name.insert(name, l);
        }
        Ok(Self { by_name })
    }

    fn port(&self, name: &str) -> Result<u16> {
        let l = self
            .by_name
            .get(name)
            .ok_or_else(|| anyhow!("no socket named {name}"))?;
        Ok(l.local_addr()?.port())
    }

    /// The legacy application's port.
    pub fn legacy_port(&self) -> Result<u16> {
        self.port("legacy")
    }

    /// The port of `env`'s Kubernetes API emulator.
    pub fn kube_port(&self, env: &str) -> Result<u16> {
        self.port(&format!("kube:{env}"))
    }

    /// The port of `env`'s AWS-side application.
    pub fn app_port(&self, env: &str) -> Result<u16> {
        self.port(&format!("app:{env}"))
    }

    /// Makes `cmd`'s process inherit every socket and tells it which descriptor is which.
    pub fn pass_to(&self, cmd: &mut Command) {
        let fds: Vec<RawFd> = self.by_name.values().map(|l| l.as_raw_fd()).collect();
        let spec = self
            .by_name
            .iter()
            .map(|(n, l)| format!("{n}={}", l.as_raw_fd()))
            .collect::<Vec<_>>()
            .join(",");
        cmd.env(FDS_VAR, spec);
        // SAFETY: runs in the forked child before exec; fcntl is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &fds {
                    let flags = libc::fcntl(*fd, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(*fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }

    /// The sockets named in [`FDS_VAR`], adopted by the serve process (descriptors are taken
    /// over; each is adopted at most once). Errors when the variable is missing or malformed.
    pub fn inherited() -> Result<Self> {
        let spec = std::env::var(FDS_VAR)
            .with_context(|| format!("{FDS_VAR} is not set: serve is started by `up`"))?;
        let mut by_name = BTreeMap::new();
        for pair in spec.split(',').filter(|p| !p.is_empty()) {
            let (name, fd) = pair
                .split_once('=')
                .ok_or_else(|| anyhow!("{FDS_VAR}: `{pair}` is not name=fd"))?;
            let fd: RawFd = fd
                .parse()
                .with_context(|| format!("{FDS_VAR}: `{fd}` is not a descriptor"))?;
            if by_name.contains_key(name) || fd < 3 {
                return Err(anyhow!(
                    "{FDS_VAR}: `{pair}` repeats a name or names a standard stream"
                ));
            }
            // SAFETY: `up` bound this descriptor as a listening socket and passed it to us only.
            let l = unsafe { TcpListener::from_raw_fd(fd) };
            by_name.insert(name.to_string(), l);
        }
        Ok(Self { by_name })
    }

    /// Takes the socket named `name` as a tokio listener.
    pub fn take(&mut self, name: &str) -> Result<tokio::net::TcpListener> {
        let l = self
            .by_name
            .remove(name)
            .ok_or_else(|| anyhow!("no inherited socket named {name}"))?;
        l.set_nonblocking(true)?;
        Ok(tokio::net::TcpListener::from_std(l)?)
    }
}
