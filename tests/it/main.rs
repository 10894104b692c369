//! One integration binary: every test starts real `replgate` processes on loopback.

mod harness;

mod auth;
mod bad_input;
mod compat;
mod crash;
mod ctl;
mod front;
mod fuzz;
mod lifecycle;
mod openapi;
mod ops;
mod pairing;
mod rng;
mod target;
