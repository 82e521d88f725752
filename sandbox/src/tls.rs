//! The sandbox's PostgreSQL TLS, as managed databases have it: a CA of the sandbox's own
//! (`<dir>/tls/ca.crt`, what DigitalOcean's per-cluster CA certificate and RDS's
//! `global-bundle.pem` stand for), a server certificate it signs for `localhost` and `127.0.0.1`,
//! `ssl = on`, and a `pg_hba.conf` with `hostssl` lines only, so a plaintext TCP connection is
//! refused ("no pg_hba.conf entry ... no encryption") as RDS with `rds.force_ssl = 1` refuses it.
//!
//! Owns: making the certificates (with the `openssl` command line) and a cluster's TLS settings.
//! Must not: leave any TCP route without TLS; the local socket stays trusted for the sandbox's
//! own bookkeeping (resetting a template's passwords), as a managed database's host would have.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory of a sandbox's certificates.
pub fn dir(sandbox: &Path) -> PathBuf {
    sandbox.join("tls")
}

/// The CA certificate clients verify the servers with (`sslrootcert`).
pub fn ca_file(sandbox: &Path) -> PathBuf {
    dir(sandbox).join("ca.crt")
}

fn openssl(args: &[&str], cwd: &Path) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .output()
        .context("running openssl (Debian package openssl)")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Makes a CA and a server certificate it signs in `dir` (`ca.crt`, `ca.key`, `server.crt`,
/// `server.key`; P-256 keys, valid ten years), and the legacy host's client certificate
/// (`legacy-host-client.crt`, `.key`): the server certificate names `localhost` and
/// `127.0.0.1`, so `sslmode=verify-full` holds for the sandbox's URLs. `cn` names the CA.
///
/// # Errors
/// When `openssl` is missing or fails.
pub fn make(dir: &Path, cn: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let subject = format!("/CN={cn}");
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-subj",
        &subject,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&ca, dir)?;
    sign(
        dir,
        &ec,
        "server",
        "/CN=localhost",
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )?;
    // The legacy host's client certificate: what its server presents when it connects out
    // (crate::rights::LEGACY_HOST_CN), so the target can refuse the route.
    sign(
        dir,
        &ec,
        "legacy-host-client",
        "/CN=legacy-host",
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
    )?;
    // The servers' user reads the CA too: a subscription's connection verifies the publisher
    // with it (`sslrootcert` in the subscription's conninfo).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(dir.join("ca.crt"), std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// A key `<name>.key` and a certificate `<name>.crt` for `subject` in `dir`, signed by the CA
/// there, with the X.509 extensions `ext` (openssl's extfile syntax).
fn sign(dir: &Path, ec: &[&str], name: &str, subject: &str, ext: &str) -> Result<()> {
    let (key, csr, crt, extfile) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("{name}.ext"),
    );
    let mut req = vec!["req"];
    req.extend(ec);
    req.extend(["-keyout", &key, "-out", &csr, "-subj", subject]);
    openssl(&req, dir)?;
    std::fs::write(dir.join(&extfile), ext)?;
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "3650",
            "-extfile",
            &extfile,
        ],
        dir,
    )
}

/// Gives the cluster in `data` the server certificate of `tls` and requires TLS on every TCP
/// connection: `ssl = on` in postgresql.conf, and a pg_hba.conf of `local` (trusted) and
/// `hostssl` (SCRAM) lines only. Safe to repeat (a later setting wins; pg_hba.conf is
/// rewritten whole). The caller owns the data directory's ownership.
///
/// # Errors
/// When a file cannot be copied or written.
pub fn secure_cluster(data: &Path, tls: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for f in ["server.crt", "server.key"] {
        std::fs::copy(tls.join(f), data.join(f))
            .with_context(|| format!("copying {} into {}", f, data.display()))?;
    }
    // PostgreSQL refuses a key readable by others.
    std::fs::set_permissions(
        data.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )?;
    std::fs::write(
        data.join("pg_hba.conf"),
        "# cutover sandbox: TLS required on TCP, as on RDS (rds.force_ssl) and DigitalOcean\n\
         local   all          all                  trust\n\
         local   replication  all                  trust\n\
         hostssl all          all  127.0.0.1/32    scram-sha-256\n\
         hostssl replication  all  127.0.0.1/32    scram-sha-256\n",
    )?;
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))?;
    std::io::Write::write_all(
        &mut conf,
        b"ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_min_protocol_version = 'TLSv1.2'\n",
    )?;
    Ok(())
}

/// The query a sandbox URL ends with: `?sslmode=verify-full&sslrootcert=<CA file>`.
/// The path is absolute (a subscription's connection reads it from the server's own working
/// directory).
pub fn url_query(sandbox: &Path) -> String {
    let ca = ca_file(sandbox);
    let ca = std::fs::canonicalize(&ca).unwrap_or(ca);
    format!("?sslmode=verify-full&sslrootcert={}", ca.display())
}
