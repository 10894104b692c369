//! The daemon's tunnel routes and the state their handlers share. Handlers are thin:
//! parse, authorize (the peer is the connection's verified certificate), call the domain,
//! map the result.

use serde_json::Value;

use super::{BodyLimit, Call, Reply, Route, TunnelError};
use crate::config::Storage;
use crate::pairing::target;
use crate::store::Store;
use crate::wire::protocol::Hello;

/// What tunnel handlers may use, built once by the daemon.
pub struct App {
    pub store: Store,
    /// The configured storages, to name a source's storage.
    pub storage: Vec<Storage>,
}

/// Every route the tunnel serves.
pub fn table() -> Vec<Route<App>> {
    vec![Route::new(
        "GET",
        "/tunnel/v1/hello",
        BodyLimit::Capped(0),
        hello,
    )]
}

/// `GET /tunnel/v1/hello`: the source's system id and storage. The first hello of a
/// certificate marks its pairing collected.
fn hello(app: &App, call: &mut Call<'_>) -> Result<Reply, TunnelError> {
    let serial = &call.peer().serial;
    let row = target::record_hello(&app.store, serial, call.now)?.ok_or_else(|| {
        TunnelError::Forbidden("this certificate belongs to no paired system".into())
    })?;
    let storage = row
        .storage_id
        .and_then(|id| app.storage.iter().find(|s| s.id == id));
    let hello = Hello {
        system_id: row.id,
        system_uuid: row.system_uuid.clone().unwrap_or_default(),
        storage_id: row.storage_id,
        storage_name: storage.map(|s| s.name.clone()),
    };
    let value: Value =
        serde_json::to_value(hello).map_err(|e| TunnelError::Internal(Box::new(e)))?;
    Ok(Reply::json(200, &value))
}
