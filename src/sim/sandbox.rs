//! All four simulators together: started in-process by `serve` in sandbox mode (the
//! default), or standalone by `wa-onboard sim` for other teams' tests.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::common::Running;
use super::digital99::{Digital99Sim, Digital99SimConfig};
use super::exotel::{ExotelSim, ExotelSimConfig, ExotelSimServers};
use super::gupshup::{GupshupSim, GupshupSimConfig};
use super::whapi::{WhapiSim, WhapiSimConfig, WhapiSimServers};

/// Per-simulator settings (`[sandbox.sims.gupshup]` etc. in the config file).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SimSettings {
    /// Gupshup simulator.
    pub gupshup: GupshupSimConfig,
    /// Exotel simulator.
    pub exotel: ExotelSimConfig,
    /// Whapi.Cloud simulator.
    pub whapi: WhapiSimConfig,
    /// 99digital simulator.
    pub digital99: Digital99SimConfig,
}

/// Base URLs of the running simulators; adapters of sandbox accounts call these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SandboxEndpoints {
    /// Gupshup partner API.
    pub gupshup: String,
    /// Exotel Singapore cluster.
    pub exotel_singapore: String,
    /// Exotel Mumbai cluster.
    pub exotel_mumbai: String,
    /// Whapi manager (partner) API.
    pub whapi_manager: String,
    /// Whapi gate (channel) API.
    pub whapi_gate: String,
    /// 99digital partners API.
    pub digital99: String,
}

/// The running simulators; dropping this stops them.
pub struct Sandbox {
    /// The Gupshup Partner API simulator (tests script its faults and read its counters here).
    pub gupshup: GupshupSim,
    /// The Exotel ISV API simulator.
    pub exotel: ExotelSim,
    /// The Whapi.Cloud simulator (manager API and per-channel Gate API).
    pub whapi: WhapiSim,
    /// The 99digital partners API simulator.
    pub digital99: Digital99Sim,
    servers: (Running, ExotelSimServers, WhapiSimServers, Running),
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("endpoints", &self.endpoints()).finish()
    }
}

impl Sandbox {
    /// Starts the simulators on `host`. With `base_port` 0 every listener takes a free port;
    /// otherwise they take `base_port .. base_port + 5` in the order of [`SandboxEndpoints`].
    pub async fn start(settings: &SimSettings, host: &str, base_port: u16) -> std::io::Result<Self> {
        let addr = |offset: u16| -> std::io::Result<SocketAddr> {
            let port = if base_port == 0 { 0 } else { base_port + offset };
            format!("{host}:{port}")
                .parse()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))
        };
        let (gupshup, g) = GupshupSim::spawn(settings.gupshup.clone(), addr(0)?).await?;
        let (exotel, e) = ExotelSim::spawn(settings.exotel.clone(), addr(1)?, addr(2)?).await?;
        let (whapi, w) = WhapiSim::spawn(settings.whapi.clone(), addr(3)?, addr(4)?).await?;
        let (digital99, d) = Digital99Sim::spawn(settings.digital99.clone(), addr(5)?).await?;
        Ok(Self { gupshup, exotel, whapi, digital99, servers: (g, e, w, d) })
    }

    /// Where each simulator listens.
    pub fn endpoints(&self) -> SandboxEndpoints {
        let (g, e, w, d) = &self.servers;
        SandboxEndpoints {
            gupshup: g.base_url(),
            exotel_singapore: e.singapore.base_url(),
            exotel_mumbai: e.mumbai.base_url(),
            whapi_manager: w.manager.base_url(),
            whapi_gate: w.gate.base_url(),
            digital99: d.base_url(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn all_four_start_and_answer() {
        let sandbox = Sandbox::start(&SimSettings::default(), "127.0.0.1", 0).await.unwrap();
        let ep = sandbox.endpoints();
        let http = reqwest::Client::new();
        for base in
            [&ep.gupshup, &ep.exotel_singapore, &ep.exotel_mumbai, &ep.whapi_manager, &ep.whapi_gate, &ep.digital99]
        {
            let r = http.get(format!("{base}/_sim/counters")).send().await.unwrap();
            assert!(r.status().is_success(), "{base}");
        }
        // Gupshup answers its documented login with the default sandbox partner.
        let r = http
            .post(format!("{}/partner/account/login", ep.gupshup))
            .form(&[("email", "sandbox@wa-onboard.local"), ("secret", "sandbox-secret")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}
