//! One MQTT session builder for every caller: the agent's uplink (`run`), `check`,
//! `tail --from-broker` and `zero` all open their sessions through [`SessionSpec`], so they
//! agree on the broker address, TLS (CA, client certificate, server name: [`super::tls`]),
//! credentials from `password_file`, keep-alive, protocol version and packet limits. The CLI
//! tools use the client id `<gw>-<tool>-<pid>`, so they never take over the agent's session.
//!
//! Two protocol versions behind one [`Client`] / [`EventLoop`] pair:
//! - **MQTT 5** (the default): `[mqtt] max_packet` goes into CONNECT as Maximum Packet Size,
//!   and the broker must not send this client anything bigger (MQTT 5.0 §3.1.2.11.4): it
//!   drops the message for us, so a huge publish on `cmd` never reaches the gateway and the
//!   session stays up. PUBACKs carry their reason code ([`Event::PubAck`]); a code of 0x80
//!   or more means the broker did not accept the message ([`accepted`]).
//! - **MQTT 3.1.1** (`protocol = "3.1.1"`, for brokers without MQTT 5): the broker cannot be
//!   told; `max_packet` is only the client's incoming limit, checked from a packet's fixed
//!   header before its body is read (memory stays bounded by the configuration). A bigger
//!   packet ends the connection with [`SessionError::Oversize`]; the broker's own limit
//!   (Mosquitto `message_size_limit`) must be at or below `max_packet`.
//!
//! [`SessionSpec::options`] is pure (it builds rumqttc's options and nothing else), so what a
//! session asks for is unit-tested; [`SessionSpec::connect`] makes the client and event loop.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5 as v5p;
use rumqttc::QoS;
use tokio_rustls::rustls::ClientConfig;

use super::config::{BrokerAddress, MqttConfig, MqttProtocol};
use crate::secrets::Secret;

/// The last will: published by the broker (QoS 1) when the session ends without a DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// Retained?
    pub retain: bool,
}

/// Everything one MQTT session is opened with.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    /// Where the broker is.
    pub broker: BrokerAddress,
    /// MQTT client id.
    pub client_id: String,
    /// MQTT 5 or 3.1.1.
    pub protocol: MqttProtocol,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// The largest packet taken in (and, with 3.1.1, sent).
    pub max_packet: u32,
    /// Most QoS 1 publishes in flight.
    pub inflight: u16,
    /// Requests the client queues before `try_*` calls fail.
    pub capacity: usize,
    /// TLS client configuration, for `mqtts://`.
    pub tls: Option<Arc<ClientConfig>>,
    /// User name and password.
    pub credentials: Option<(String, Secret)>,
    /// Last will, if wanted.
    pub will: Option<Will>,
}

/// A session that could not be set up from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `[mqtt] url` does not parse.
    #[error("[mqtt] url: {0}")]
    Url(super::config::UrlError),
    /// `mqtts://` without `ca_file`.
    #[error("{0}: mqtts:// needs [mqtt] ca_file")]
    NoCa(BrokerAddress),
    /// The TLS files could not be loaded.
    #[error(transparent)]
    Tls(#[from] super::tls::TlsError),
    /// The password file could not be read.
    #[error(transparent)]
    Password(#[from] crate::secrets::PasswordFileError),
}

/// Why a session ended or a request could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The broker sent a packet over `max_packet` (MQTT 3.1.1 only: an MQTT 5 broker drops
    /// those for us).
    #[error("the broker sent a packet of {size} bytes, over [mqtt] max_packet ({limit} bytes): set the broker's limit at or below max_packet (Mosquitto: message_size_limit {limit}), or use protocol = \"5\"")]
    Oversize {
        /// The packet's size (its remaining length).
        size: usize,
        /// `max_packet`.
        limit: u32,
    },
    /// The broker answered CONNECT with a refusal.
    #[error("the broker refused the connection: {0}")]
    Refused(String),
    /// Any other network or protocol failure.
    #[error("{0}")]
    Connection(String),
    /// The client's request queue is full or its event loop is gone.
    #[error("the MQTT client cannot take the request: {0}")]
    Request(String),
}

/// A network event of either protocol, reduced to what towerlink acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The broker accepted the session.
    ConnAck,
    /// A publish left the client (`pkid` 0 for QoS 0).
    Published(u16),
    /// The broker acknowledged `pkid` with reason `code` (always 0 with 3.1.1).
    PubAck {
        /// Packet id.
        pkid: u16,
        /// MQTT 5 reason code: below 0x80 accepted.
        code: u8,
    },
    /// A subscription was acknowledged.
    SubAck,
    /// A message arrived.
    Message {
        /// Topic.
        topic: String,
        /// Payload.
        payload: Vec<u8>,
    },
    /// The client sent DISCONNECT.
    Disconnecting,
    /// Nothing towerlink acts on (pings, our own acks...).
    Other,
}

/// Did the broker accept a publish acknowledged with this reason code? (MQTT 5: codes below
/// 0x80 are successes, 0x10 "no matching subscribers" included.)
pub fn accepted(code: u8) -> bool {
    code < 0x80
}

/// rumqttc's options for one session, of the configured version.
#[derive(Debug)]
pub enum Options {
    /// MQTT 3.1.1.
    V311(Box<rumqttc::MqttOptions>),
    /// MQTT 5.
    V5(Box<rumqttc::v5::MqttOptions>),
}

/// The client handle of a session.
#[derive(Debug, Clone)]
pub enum Client {
    /// MQTT 3.1.1.
    V311(rumqttc::AsyncClient),
    /// MQTT 5.
    V5(rumqttc::v5::AsyncClient),
}

/// The event loop of a session: poll it from one task that is never cancelled mid-packet.
pub enum EventLoop {
    /// MQTT 3.1.1.
    V311(Box<rumqttc::EventLoop>),
    /// MQTT 5.
    V5(Box<rumqttc::v5::EventLoop>),
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EventLoop::V311(_) => "EventLoop(3.1.1)",
            EventLoop::V5(_) => "EventLoop(5)",
        })
    }
}

/// The settings both versions share, on either version's options (`rumqttc` or
/// `rumqttc::v5`: they have the same setters). The only place options are created.
macro_rules! base_options {
    ($($module:ident)::+, $spec:expr) => {{
        let spec: &SessionSpec = $spec;
        let mut o = $($module)::+::MqttOptions::new(
            spec.client_id.clone(),
            spec.broker.host.clone(),
            spec.broker.port,
        );
        o.set_keep_alive(spec.keep_alive);
        o.set_request_channel_capacity(spec.capacity);
        if let Some(tls) = &spec.tls {
            o.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls.clone()),
            ));
        }
        if let Some((user, password)) = &spec.credentials {
            o.set_credentials(user.clone(), password.expose());
        }
        o
    }};
}

impl SessionSpec {
    /// A session to `broker` as `client_id` with the given version and limit; keep-alive
    /// 30 s, 16 requests in flight or queued, no TLS, no credentials, no will.
    pub fn new(
        broker: BrokerAddress,
        client_id: impl Into<String>,
        protocol: MqttProtocol,
        max_packet: u32,
    ) -> SessionSpec {
        SessionSpec {
            broker,
            client_id: client_id.into(),
            protocol,
            keep_alive: Duration::from_secs(30),
            max_packet,
            inflight: 16,
            capacity: 16,
            tls: None,
            credentials: None,
            will: None,
        }
    }

    /// The session of CLI tool `tool`, set up exactly as the agent's (URL, TLS files, client
    /// certificate, user name and password file, keep-alive, protocol, `max_packet`), under
    /// the client id `<gw>-<tool>-<pid>`.
    pub fn for_tool(gw: &str, mqtt: &MqttConfig, tool: &str) -> Result<SessionSpec, SetupError> {
        let broker = mqtt.broker().map_err(SetupError::Url)?;
        let tls = match super::tls::TlsFiles::from_config(mqtt, &broker) {
            Some(files) => Some(super::tls::client_config(&files)?),
            None if broker.tls => return Err(SetupError::NoCa(broker)),
            None => None,
        };
        let credentials = mqtt.credentials()?;
        let client_id = format!("{gw}-{tool}-{}", std::process::id());
        let max_packet = u32::try_from(mqtt.max_packet).unwrap_or(u32::MAX);
        let mut spec = SessionSpec::new(broker, client_id, mqtt.protocol, max_packet);
        spec.keep_alive = mqtt.keep_alive;
        spec.tls = tls;
        spec.credentials = credentials;
        Ok(spec)
    }

    /// rumqttc's options for this session (pure: nothing is opened).
    pub fn options(&self) -> Options {
        // The disk queue, not the broker session, re-sends what was not acknowledged: every
        // session starts clean.
        match self.protocol {
            MqttProtocol::V311 => {
                let mut o = base_options!(rumqttc, self);
                o.set_clean_session(true);
                o.set_inflight(self.inflight.max(1));
                let max = self.max_packet as usize;
                o.set_max_packet_size(max, max);
                if let Some(w) = &self.will {
                    o.set_last_will(rumqttc::LastWill::new(
                        w.topic.clone(),
                        w.payload.clone(),
                        QoS::AtLeastOnce,
                        w.retain,
                    ));
                }
                Options::V311(Box::new(o))
            }
            MqttProtocol::V5 => {
                let mut o = base_options!(rumqttc::v5, self);
                o.set_clean_start(true);
                o.set_outgoing_inflight_upper_limit(self.inflight.max(1));
                // Announced in CONNECT and enforced on what comes in; what goes out is bounded
                // by the broker's own Maximum Packet Size from CONNACK.
                o.set_max_packet_size(Some(self.max_packet));
                if let Some(w) = &self.will {
                    o.set_last_will(v5p::LastWill::new(
                        w.topic.clone(),
                        w.payload.clone(),
                        v5_qos(QoS::AtLeastOnce),
                        w.retain,
                        None,
                    ));
                }
                Options::V5(Box::new(o))
            }
        }
    }

    /// A client and its event loop; nothing touches the network until the loop is polled.
    pub fn connect(&self) -> (Client, EventLoop) {
        match self.options() {
            Options::V311(o) => {
                let (c, e) = rumqttc::AsyncClient::new(*o, self.capacity);
                (Client::V311(c), EventLoop::V311(Box::new(e)))
            }
            Options::V5(o) => {
                let (c, e) = rumqttc::v5::AsyncClient::new(*o, self.capacity);
                (Client::V5(c), EventLoop::V5(Box::new(e)))
            }
        }
    }
}

fn v5_qos(qos: QoS) -> rumqttc::v5::mqttbytes::QoS {
    match qos {
        QoS::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

fn request_error(e: impl std::fmt::Display) -> SessionError {
    SessionError::Request(e.to_string())
}

impl Client {
    /// Queues a publish without waiting (the publisher's ledger relies on this: see
    /// [`super::ledger`]).
    pub fn try_publish(
        &self,
        topic: impl Into<String>,
        qos: QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) -> Result<(), SessionError> {
        let payload: Vec<u8> = payload.into();
        match self {
            Client::V311(c) => c
                .try_publish(topic, qos, retain, payload)
                .map_err(request_error),
            Client::V5(c) => c
                .try_publish(topic, v5_qos(qos), retain, payload)
                .map_err(request_error),
        }
    }

    /// Queues a publish, waiting for room in the request queue.
    pub async fn publish(
        &self,
        topic: impl Into<String>,
        qos: QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) -> Result<(), SessionError> {
        let payload: Vec<u8> = payload.into();
        match self {
            Client::V311(c) => c
                .publish(topic, qos, retain, payload)
                .await
                .map_err(request_error),
            Client::V5(c) => c
                .publish(topic, v5_qos(qos), retain, payload)
                .await
                .map_err(request_error),
        }
    }

    /// Queues a subscription without waiting.
    pub fn try_subscribe(&self, filter: impl Into<String>, qos: QoS) -> Result<(), SessionError> {
        match self {
            Client::V311(c) => c.try_subscribe(filter, qos).map_err(request_error),
            Client::V5(c) => c.try_subscribe(filter, v5_qos(qos)).map_err(request_error),
        }
    }

    /// Queues a subscription, waiting for room in the request queue.
    pub async fn subscribe(&self, filter: impl Into<String>, qos: QoS) -> Result<(), SessionError> {
        match self {
            Client::V311(c) => c.subscribe(filter, qos).await.map_err(request_error),
            Client::V5(c) => c
                .subscribe(filter, v5_qos(qos))
                .await
                .map_err(request_error),
        }
    }

    /// Queues a DISCONNECT without waiting.
    pub fn try_disconnect(&self) -> Result<(), SessionError> {
        match self {
            Client::V311(c) => c.try_disconnect().map_err(request_error),
            Client::V5(c) => c.try_disconnect().map_err(request_error),
        }
    }

    /// Queues a DISCONNECT, waiting for room in the request queue.
    pub async fn disconnect(&self) -> Result<(), SessionError> {
        match self {
            Client::V311(c) => c.disconnect().await.map_err(request_error),
            Client::V5(c) => c.disconnect().await.map_err(request_error),
        }
    }
}

impl EventLoop {
    /// The next event; an error ends the connection (make a new session to reconnect).
    pub async fn poll(&mut self) -> Result<Event, SessionError> {
        match self {
            EventLoop::V311(e) => {
                let limit = u32::try_from(e.mqtt_options.max_packet_size()).unwrap_or(u32::MAX);
                match e.poll().await {
                    Ok(ev) => v311_event(ev),
                    Err(err) => Err(v311_error(err, limit)),
                }
            }
            EventLoop::V5(e) => {
                let limit = e.options.max_packet_size().unwrap_or(u32::MAX);
                match e.poll().await {
                    Ok(ev) => Ok(v5_event(ev)),
                    Err(err) => Err(v5_error(err, limit)),
                }
            }
        }
    }
}

fn v311_event(ev: rumqttc::Event) -> Result<Event, SessionError> {
    use rumqttc::{Event as E, Outgoing, Packet};
    Ok(match ev {
        E::Incoming(Packet::ConnAck(ack)) => {
            if ack.code != rumqttc::ConnectReturnCode::Success {
                return Err(SessionError::Refused(format!("{:?}", ack.code)));
            }
            Event::ConnAck
        }
        E::Incoming(Packet::PubAck(ack)) => Event::PubAck {
            pkid: ack.pkid,
            code: 0,
        },
        E::Incoming(Packet::SubAck(_)) => Event::SubAck,
        E::Incoming(Packet::Publish(p)) => Event::Message {
            topic: p.topic,
            payload: p.payload.to_vec(),
        },
        E::Outgoing(Outgoing::Publish(pkid)) => Event::Published(pkid),
        E::Outgoing(Outgoing::Disconnect) => Event::Disconnecting,
        _ => Event::Other,
    })
}

fn v311_error(err: rumqttc::ConnectionError, limit: u32) -> SessionError {
    use rumqttc::{ConnectionError as C, StateError as S};
    match &err {
        C::MqttState(S::Deserialization(rumqttc::Error::PayloadSizeLimitExceeded(size))) => {
            SessionError::Oversize { size: *size, limit }
        }
        C::ConnectionRefused(code) => SessionError::Refused(format!("{code:?}")),
        _ => SessionError::Connection(err.to_string()),
    }
}

fn v5_event(ev: rumqttc::v5::Event) -> Event {
    use rumqttc::v5::Event as E;
    use rumqttc::Outgoing;
    use v5p::Packet;
    match ev {
        // A refused CONNACK arrives as an error (`ConnectionRefused`).
        E::Incoming(Packet::ConnAck(_)) => Event::ConnAck,
        E::Incoming(Packet::PubAck(ack)) => Event::PubAck {
            pkid: ack.pkid,
            code: puback_code(&ack.reason),
        },
        E::Incoming(Packet::SubAck(_)) => Event::SubAck,
        E::Incoming(Packet::Publish(p)) => Event::Message {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload.to_vec(),
        },
        E::Outgoing(Outgoing::Publish(pkid)) => Event::Published(pkid),
        E::Outgoing(Outgoing::Disconnect) => Event::Disconnecting,
        _ => Event::Other,
    }
}

fn v5_error(err: rumqttc::v5::ConnectionError, limit: u32) -> SessionError {
    use rumqttc::v5::mqttbytes::Error as M;
    use rumqttc::v5::{ConnectionError as C, StateError as S};
    match &err {
        C::MqttState(S::Deserialization(M::PayloadSizeLimitExceeded { pkt_size, .. })) => {
            SessionError::Oversize {
                size: *pkt_size,
                limit,
            }
        }
        C::MqttState(S::IncomingPacketTooLarge { pkt_size, .. }) => SessionError::Oversize {
            size: *pkt_size,
            limit,
        },
        C::ConnectionRefused(code) => SessionError::Refused(format!("{code:?}")),
        _ => SessionError::Connection(err.to_string()),
    }
}

/// The wire value of a PUBACK reason (MQTT 5.0 §3.4.2.1).
fn puback_code(reason: &v5p::PubAckReason) -> u8 {
    use v5p::PubAckReason as R;
    match reason {
        R::Success => 0x00,
        R::NoMatchingSubscribers => 0x10,
        R::UnspecifiedError => 0x80,
        R::ImplementationSpecificError => 0x83,
        R::NotAuthorized => 0x87,
        R::TopicNameInvalid => 0x90,
        R::PacketIdentifierInUse => 0x91,
        R::QuotaExceeded => 0x97,
        R::PayloadFormatInvalid => 0x99,
    }
}

#[cfg(test)]
mod tests;
