//! Black-box tests against strict vendor servers (issue 17, second "Done when" item): for
//! each provider a small HTTP server written here that implements only the requests,
//! parameters and fields the vendor pages document (docs/providers.md [C] facts and the
//! seed pages) and answers 400 to anything else. The real service (in-process, real gRPC
//! over TCP) is pointed at it through `AccountOptions.endpoint` and driven to each flow's
//! end state; every test also fails on any refused (undocumented) request.

#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;

#[allow(dead_code)]
mod shared;

mod digital99;
mod exotel;
mod gupshup;
mod whapi;
