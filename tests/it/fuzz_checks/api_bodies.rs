//! Every JSON body the API reads, through the real router and handlers (`api::dispatch`)
//! of a real `App` in this process: a database file, a CA, a spool, a storage, and a
//! superuser's token, so each body reaches its handler's parsing and the domain behind
//! it. The input's first byte picks a route that reads a body, the rest is the body. No
//! body, however odd, may get a 500 or a panic: a wrong field is the admin's 400 naming
//! it, a state the body cannot have now is a 404 or 409.
//!
//! The state persists across inputs (as in a daemon that runs for months). The one route
//! that dials out, `POST /api/replication/target`, has its `target` and `ip` pointed at
//! `127.0.0.1:1` after `pairing::source::parse_target` has seen the given text, so the
//! fuzzer never reaches another host.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;

use replgate::api::console::guard::Browser;
use replgate::api::error::ApiError;
use replgate::api::{dispatch, route_table, App, Incoming, Route};
use replgate::auth::{Authenticator, SessionRules, Throttle};
use replgate::ca::{Authority, Ca, CaSet};
use replgate::config::Config;
use replgate::front::{PeerInfo, PeerTable};
use replgate::identity::TargetDirs;
use replgate::pairing::source::parse_target;
use replgate::pairing::source::request::Outgoing;
use replgate::spool::Spool;
use replgate::store::Store;
use replgate::tls::ServerCertSlot;

struct World {
    app: App,
    routes: Vec<Route>,
    token: String,
    peer: PeerInfo,
}

const PASSWORD: &str = "fuzz-root-password";

/// Where the world's files are: in memory where there is /dev/shm (every commit is an
/// fsync), one directory per process. Whoever runs the check removes it afterwards.
pub fn world_dir() -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    base.join(format!("replgate-fuzz-api-{}", std::process::id()))
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = world_dir();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        let toml = format!(
            "data_dir = {:?}\n[[storage]]\nid = 1\nname = \"fuzz\"\npath = {:?}\n",
            dir.display().to_string(),
            dir.join("storage").display().to_string()
        );
        let config = Config::from_toml(&toml, std::iter::empty()).unwrap();
        let store = Store::open(&dir.join("replgate.redb")).unwrap();
        let now = replgate::model::now();
        let ca = Arc::new(Ca::generate("fuzz ca", time::OffsetDateTime::now_utc()).unwrap());
        let cert_slot = || {
            let lifetime = Duration::from_secs(86_400 * 30);
            let issued = ca
                .issue_server_cert(
                    &["localhost".into()],
                    &[],
                    lifetime,
                    time::OffsetDateTime::now_utc(),
                )
                .unwrap();
            let chain = format!("{}{}", issued.cert_pem, ca.cert_pem());
            ServerCertSlot::new(&chain, &issued.key_pem).unwrap()
        };
        let (api_cert, tunnel_cert) = (cert_slot(), cert_slot());
        let spool = Spool::open(
            dir.join("spool"),
            ca.cert_pem().to_string(),
            "127.0.0.1:1".into(),
            30,
        )
        .unwrap();
        let auth = Authenticator::new(
            store.clone(),
            SessionRules {
                idle: Duration::from_secs(86_400),
                lifetime: Duration::from_secs(86_400 * 365),
            },
            // Logins in the corpus must not lock the fuzzer's own session out.
            Throttle::new(1_000, Duration::from_secs(1), Duration::from_secs(1)),
        )
        .unwrap();
        auth.bootstrap_root(PASSWORD, now).unwrap();
        let token = auth
            .login("root", PASSWORD, "127.0.0.1", now)
            .unwrap()
            .token;
        let target_dirs = TargetDirs::new(dir.join("targets"));
        target_dirs.ensure().unwrap();
        let replication = Arc::new(replgate::replication::Shared::load(&store, 64).unwrap());
        let client_trust = replgate::tls::ClientTrust::new(vec![ca.cert_der()]).unwrap();
        let ca = Arc::into_inner(ca).expect("the one reference to the ca");
        let app = App {
            config,
            cas: Arc::new(Authority::new(CaSet::single(ca))),
            client_trust,
            spool,
            store,
            auth,
            peers: Arc::new(PeerTable::new()),
            system_uuid: "f0220000-0000-4000-8000-00000000f022".into(),
            target_dirs,
            outgoing: Outgoing::new(),
            first_start: now,
            started: now,
            replication,
            api_cert,
            tunnel_cert,
            certified: Default::default(),
            request_counts: Default::default(),
            system_rows: Default::default(),
            receive_lines: Default::default(),
            expiry_lines: Default::default(),
        };
        let routes: Vec<Route> = route_table()
            .into_iter()
            .filter(|r| matches!(r.method, "POST" | "PUT" | "PATCH" | "DELETE"))
            // Would end the fuzzer's own session.
            .filter(|r| r.path != "/api/logout")
            .collect();
        World {
            app,
            routes,
            token,
            peer: PeerInfo {
                addr: SocketAddr::from(([127, 0, 0, 1], 40_000)),
            },
        }
    })
}

/// Keeps the outgoing request on loopback (see the module doc).
fn loopback_only(body: &[u8]) -> Vec<u8> {
    let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(body) else {
        return body.to_vec();
    };
    if let Some(Value::String(t)) = map.get("target") {
        let _ = parse_target(t);
        map.insert("target".into(), Value::String("127.0.0.1:1".into()));
    }
    if map.get("ip").is_some_and(|v| !v.is_null()) {
        map.insert("ip".into(), Value::String("127.0.0.1".into()));
    }
    Value::Object(map).to_string().into_bytes()
}

/// One input: panics when a property fails.
pub fn run(input: &[u8]) {
    let w = world();
    let Some((&pick, body)) = input.split_first() else {
        return;
    };
    let route = &w.routes[usize::from(pick) % w.routes.len()];
    let url = route
        .path
        .split('/')
        .map(|s| if s.starts_with('{') { "1" } else { s })
        .collect::<Vec<_>>()
        .join("/");
    let body = if route.path == "/api/replication/target" {
        loopback_only(body)
    } else {
        body.to_vec()
    };
    let answer = dispatch(
        &w.app,
        &w.routes,
        Incoming {
            peer: &w.peer,
            now: replgate::model::now(),
            method: route.method,
            url: &url,
            body: &body,
            token: Some(w.token.clone()),
            browser: Browser::default(),
            if_none_match: None,
        },
    );
    match answer {
        Ok(reply) => assert!(
            reply.status < 500,
            "{} {url}: {}",
            route.method,
            reply.status
        ),
        Err(ApiError::Internal(cause)) => {
            panic!(
                "{} {url}: 500 ({cause}) for {:?}",
                route.method,
                String::from_utf8_lossy(&body)
            )
        }
        Err(e) => {
            let (status, _) = e.status_and_code();
            assert!(
                status < 500 || status == 502 || status == 503,
                "{} {url}: {status} {e}",
                route.method
            );
        }
    }
}
