//! Provider simulators: faithful HTTP fakes of each BSP partner API, built in so the whole
//! flow runs offline and every test talks real HTTP.

pub mod common;
pub mod digital99;
pub mod exotel;
pub mod gupshup;
pub mod sandbox;
pub mod whapi;
