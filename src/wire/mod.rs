//! Wire formats shared by several adapters, at the bottom of the layers: the documented
//! error body (`error`), HTTP/1.1 request heads (`http`) and response heads (`response`),
//! the appliance-to-appliance protocol types (`protocol`), the replication transfer frames
//! (`transfer`) and the codec of their compressed content (`compress`), pairing tokens
//! with their join line (`token`) and hexadecimal (`hex`).
//! Plain data, parsing and rendering only; no I/O, no domain rules.

pub mod chunked;
pub mod compress;
pub mod error;
pub mod hex;
pub mod http;
pub mod protocol;
pub mod response;
pub mod token;
pub mod transfer;
