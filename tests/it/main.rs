//! One integration binary: every test starts real `replgate` processes on loopback.

mod harness;

mod auth;
mod bad_input;
mod ctl;
mod front;
mod lifecycle;
mod pairing;
mod target;
