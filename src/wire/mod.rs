//! Wire formats shared by several adapters, at the bottom of the layers: the documented
//! error body (`error`) and the appliance-to-appliance protocol types (`protocol`). Plain
//! data and rendering only; no I/O, no domain rules.

pub mod error;
pub mod protocol;
