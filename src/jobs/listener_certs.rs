//! The listeners' server certificates: loaded or issued at start, then kept fresh while
//! running (the maintenance job looks every second, and at once when the CAs in force
//! changed): re-issued at two thirds of their lifetime (`lifecycle::listener_renew_at`),
//! when SIGHUP brought new `hostnames`, or when another CA signs (a CA rollover's start,
//! its abort), and presented with the chain the CAs in force call for (with the
//! cross-certificate during a rollover: `CaSet::listener_chain`); stored
//! (`identity::ListenerFiles`) and swapped into the listener's `ServerCertSlot` (open
//! connections keep theirs).

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use crate::ca::{self, CaError, CaSet};
use crate::config::Config;
use crate::identity::{IdentityError, ListenerCert, ListenerFiles};
use crate::lifecycle;
use crate::model::{self, Chain};
use crate::tls::{ServerCertSlot, TlsError};

/// Why a listener certificate could not be loaded, issued or put in place.
#[derive(Debug)]
pub enum ListenerCertError {
    /// The CA could not issue it.
    Issue {
        listener: &'static str,
        source: CaError,
    },
    /// Its files could not be read or written.
    Files(IdentityError),
    /// Its listener's TLS refused it (its certificate or key).
    Tls {
        listener: &'static str,
        source: TlsError,
    },
}

impl fmt::Display for ListenerCertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenerCertError::Issue { listener, .. } => {
                write!(f, "issue the {listener} certificate")
            }
            ListenerCertError::Files(e) => write!(f, "{e}"),
            ListenerCertError::Tls { listener, .. } => write!(f, "{listener} tls"),
        }
    }
}

impl std::error::Error for ListenerCertError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ListenerCertError::Issue { source, .. } => Some(source),
            ListenerCertError::Files(e) => e.source(),
            ListenerCertError::Tls { source, .. } => Some(source),
        }
    }
}

/// Names and addresses a listener certificate must cover, for `hostnames`.
fn certificate_names(config: &Config, hostnames: &[String]) -> (Vec<String>, Vec<IpAddr>) {
    let mut ips: Vec<IpAddr> = vec![
        config.api_listen.ip(),
        config.tunnel_listen.ip(),
        IpAddr::from([127, 0, 0, 1]),
    ];
    let mut names = Vec::new();
    for h in hostnames {
        match h.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => names.push(h.clone()),
        }
    }
    ips.retain(|ip| !ip.is_unspecified());
    ips.sort();
    ips.dedup();
    (names, ips)
}

/// One listener's server certificate: its files, the slot its listener presents at each
/// handshake, and what the certificate in the slot was issued for, by which CA and until
/// when.
pub(crate) struct ListenerCertificate {
    name: &'static str,
    files: ListenerFiles,
    slot: Arc<ServerCertSlot>,
    current: ListenerCert,
    names: String,
    /// The leaf of `current` alone (PEM).
    leaf_pem: String,
    /// The fingerprint of the CA that issued it.
    issuer: String,
}

/// The first certificate of a chain, as PEM.
fn leaf_of(chain_pem: &str) -> Option<String> {
    ca::cert_pem_to_der(chain_pem)
        .ok()
        .map(|der| ca::cert_der_to_pem(&der))
}

impl ListenerCertificate {
    /// Loads the stored certificate of listener `name`, or issues one when it is missing,
    /// damaged (a crash between its files), issued for other names or by another CA than
    /// the one that signs now, or due; its chain is the one `cas` calls for.
    pub(crate) fn open(
        root: &Path,
        cas: &CaSet,
        name: &'static str,
        config: &Config,
    ) -> Result<ListenerCertificate, ListenerCertError> {
        let files = ListenerFiles::new(root, name);
        let names = names_text(config, &config.hostnames);
        let stored = files.load(&names).map_err(ListenerCertError::Files)?;
        let signing = cas.signing();
        let usable = |c: &ListenerCert| {
            model::now() < lifecycle::listener_renew_at(c.not_before, c.not_after)
                && leaf_of(&c.chain_pem).is_some_and(|leaf| {
                    ca::cert_pem_to_der(&leaf)
                        .is_ok_and(|der| ca::issued_by(&der, &signing.cert_der()))
                })
        };
        let mut current = match stored {
            Some(c) if usable(&c) => c,
            _ => issue_listener_cert(cas, name, config, &config.hostnames, &files)?,
        };
        let leaf_pem = leaf_of(&current.chain_pem).unwrap_or_default();
        let chain = cas.listener_chain(&leaf_pem);
        if chain != current.chain_pem {
            files
                .store(&chain, &current.key_pem, &names)
                .map_err(ListenerCertError::Files)?;
            current.chain_pem = chain;
        }
        let slot = ServerCertSlot::new(&current.chain_pem, &current.key_pem).map_err(|source| {
            ListenerCertError::Tls {
                listener: name,
                source,
            }
        })?;
        Ok(ListenerCertificate {
            name,
            files,
            slot,
            current,
            names,
            leaf_pem,
            issuer: signing.fingerprint(),
        })
    }

    /// The slot the listener presents at each handshake (shared, swapped on renewal).
    pub(crate) fn slot(&self) -> Arc<ServerCertSlot> {
        self.slot.clone()
    }

    /// Re-issues the certificate when it is due, `hostnames` changed or another CA signs
    /// now, or presents it with another chain when the CAs in force call for one; swaps
    /// it in under the running listener (open connections keep theirs). A failure is
    /// logged and tried again on the next look.
    pub(crate) fn keep_fresh(&mut self, cas: &CaSet, config: &Config, hostnames: &[String]) {
        let names = names_text(config, hostnames);
        let due = model::now()
            >= lifecycle::listener_renew_at(self.current.not_before, self.current.not_after);
        let signing = cas.signing().fingerprint();
        if !due && names == self.names && signing == self.issuer {
            self.rechain(cas);
            return;
        }
        let renewed = issue_listener_cert(cas, self.name, config, hostnames, &self.files)
            .map_err(|e| Chain(&e).to_string())
            .and_then(|fresh| {
                self.slot
                    .replace(&fresh.chain_pem, &fresh.key_pem)
                    .map(|()| fresh)
                    .map_err(|e| Chain(&e).to_string())
            });
        match renewed {
            Ok(fresh) => {
                let why = if signing != self.issuer {
                    " (another ca signs now)"
                } else if names != self.names {
                    " (hostnames changed)"
                } else {
                    ""
                };
                log::info!(
                    "renewed the {} listener certificate while running: serial {} -> {}, valid until {}{why}",
                    self.name,
                    self.current.serial,
                    fresh.serial,
                    model::format_utc(fresh.not_after),
                );
                self.leaf_pem = leaf_of(&fresh.chain_pem).unwrap_or_default();
                self.current = fresh;
                self.names = names;
                self.issuer = signing;
            }
            Err(e) => log::error!("renew the {} listener certificate: {e}", self.name),
        }
    }

    /// Presents the certificate in place with the chain `cas` calls for (the
    /// cross-certificate while a rollover runs, the new CA once it is in force).
    fn rechain(&mut self, cas: &CaSet) {
        let chain = cas.listener_chain(&self.leaf_pem);
        if chain == self.current.chain_pem {
            return;
        }
        let stored = self
            .files
            .store(&chain, &self.current.key_pem, &self.names)
            .map_err(|e| Chain(&e).to_string())
            .and_then(|()| {
                self.slot
                    .replace(&chain, &self.current.key_pem)
                    .map_err(|e| Chain(&e).to_string())
            });
        match stored {
            Ok(()) => {
                log::info!(
                    "the {} listener presents certificate {} with the chain of the cas in force now",
                    self.name,
                    self.current.serial
                );
                self.current.chain_pem = chain;
            }
            Err(e) => log::error!("present the {} listener certificate: {e}", self.name),
        }
    }
}

/// What a listener certificate's `.names` file records: the names and addresses it covers.
fn names_text(config: &Config, hostnames: &[String]) -> String {
    let (names, ips) = certificate_names(config, hostnames);
    format!("{names:?} {ips:?}")
}

/// Issues a fresh certificate for listener `name` by the CA that signs now, with the
/// chain the CAs in force call for, and stores it.
fn issue_listener_cert(
    cas: &CaSet,
    name: &'static str,
    config: &Config,
    hostnames: &[String],
    files: &ListenerFiles,
) -> Result<ListenerCert, ListenerCertError> {
    let (names, ips) = certificate_names(config, hostnames);
    let issued = cas
        .signing()
        .issue_server_cert(
            &names,
            &ips,
            config.server_cert_lifetime,
            time::OffsetDateTime::now_utc(),
        )
        .map_err(|source| ListenerCertError::Issue {
            listener: name,
            source,
        })?;
    let chain = cas.listener_chain(&issued.cert_pem);
    files
        .store(&chain, &issued.key_pem, &names_text(config, hostnames))
        .map_err(ListenerCertError::Files)?;
    log::info!(
        "issued the {name} listener certificate {} for {names:?} {ips:?}, valid until {}",
        issued.serial,
        model::format_utc(issued.not_after)
    );
    let not_before = crate::ca::cert_pem_to_der(&issued.cert_pem)
        .and_then(|der| crate::ca::cert_info(&der))
        .map(|i| i.not_before)
        .unwrap_or_else(|_| model::now());
    Ok(ListenerCert {
        chain_pem: chain,
        key_pem: issued.key_pem,
        not_before,
        not_after: issued.not_after,
        serial: issued.serial,
    })
}

/// The hostnames after a SIGHUP: the config file and environment read again, as at start.
/// Only `hostnames` is taken; other keys take effect at the next start.
pub(crate) fn reload_hostnames(config_path: Option<&Path>, current: &[String]) -> Vec<String> {
    match Config::load(config_path) {
        Ok(fresh) => {
            if fresh.hostnames == current {
                log::info!("SIGHUP: configuration read again; hostnames unchanged {current:?}");
            } else {
                log::info!(
                    "SIGHUP: hostnames {current:?} -> {:?}; re-issuing the listener certificates \
                     (other settings take effect at the next start)",
                    fresh.hostnames
                );
            }
            fresh.hostnames
        }
        Err(e) => {
            log::warn!("SIGHUP: {e}; keeping hostnames {current:?}");
            current.to_vec()
        }
    }
}
