//! The demo's embedded MQTT broker (rumqttd), on a free loopback port.
//!
//! Only the demo uses it, so the production agent never links a broker. rumqttd has no
//! shutdown API and does not report the port it bound, so we find a free port first (bind
//! port 0, read it, release it) and wait until the broker accepts connections; the broker
//! thread ends with the process.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A running embedded broker.
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
}

impl EmbeddedBroker {
    /// Starts a broker on a free port of 127.0.0.1 and waits (up to 5 s) until it listens.
    pub fn start() -> anyhow::Result<EmbeddedBroker> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        // A compact batch must pass (the demo's agent batches its windows).
        let max_payload = crate::demo::DEMO_MAX_PAYLOAD;
        let config_text = format!(
            r#"
id = 0
[router]
id = 0
max_connections = 100
max_outgoing_packet_count = 1000
max_segment_size = 10485760
max_segment_count = 10

[v4.1]
name = "demo"
listen = "{addr}"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = {max_payload}
    max_inflight_count = 200
    dynamic_filters = true
"#
        );
        let config: rumqttd::Config = toml::from_str(&config_text)?;
        std::thread::Builder::new()
            .name("demo-broker".into())
            .spawn(move || {
                let mut broker = rumqttd::Broker::new(config);
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "embedded broker stopped");
                }
            })?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            if Instant::now() > deadline {
                anyhow::bail!("the embedded broker did not start listening on {addr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(EmbeddedBroker { addr })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }
}
