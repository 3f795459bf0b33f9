//! Tests of [`super`].

use super::*;

fn spec(protocol: MqttProtocol) -> SessionSpec {
    let broker = BrokerAddress::parse("mqtt://127.0.0.1:1884").expect("url");
    let mut s = SessionSpec::new(broker, "gw-1-tail-42", protocol, 300_000);
    s.keep_alive = Duration::from_secs(7);
    s.inflight = 50;
    s.credentials = Some(("gw-1".into(), Secret::new("pa55".into())));
    s.will = Some(Will {
        topic: "t/gw-1/state".into(),
        payload: b"offline".to_vec(),
        retain: true,
    });
    s
}

#[test]
fn mqtt5_announces_max_packet_and_sets_will_credentials_and_client_id() {
    let Options::V5(o) = spec(MqttProtocol::V5).options() else {
        panic!("not MQTT 5")
    };
    assert_eq!(o.client_id(), "gw-1-tail-42");
    assert_eq!(o.broker_address(), ("127.0.0.1".to_owned(), 1884));
    assert_eq!(o.keep_alive(), Duration::from_secs(7));
    assert_eq!(
        o.max_packet_size(),
        Some(300_000),
        "Maximum Packet Size in CONNECT"
    );
    assert_eq!(
        o.connect_properties().and_then(|p| p.max_packet_size),
        Some(300_000)
    );
    assert!(o.clean_start());
    assert_eq!(o.get_outgoing_inflight_upper_limit(), Some(50));
    let login = o.credentials().expect("credentials");
    assert_eq!(
        (login.username.as_str(), login.password.as_str()),
        ("gw-1", "pa55")
    );
    let will = o.last_will().expect("will");
    assert_eq!(
        (&will.topic[..], &will.message[..], will.qos, will.retain),
        (
            &b"t/gw-1/state"[..],
            &b"offline"[..],
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            true
        )
    );
}

#[test]
fn mqtt311_limits_incoming_packets_and_sets_the_same_session() {
    let Options::V311(o) = spec(MqttProtocol::V311).options() else {
        panic!("not 3.1.1")
    };
    assert_eq!(o.client_id(), "gw-1-tail-42");
    assert_eq!(o.keep_alive(), Duration::from_secs(7));
    assert_eq!(o.max_packet_size(), 300_000, "the client's incoming limit");
    assert!(o.clean_session());
    assert_eq!(o.inflight(), 50);
    let login = o.credentials().expect("credentials");
    assert_eq!(
        (login.username.as_str(), login.password.as_str()),
        ("gw-1", "pa55")
    );
    let will = o.last_will().expect("will");
    assert_eq!(
        (
            will.topic.as_str(),
            &will.message[..],
            will.qos,
            will.retain
        ),
        ("t/gw-1/state", &b"offline"[..], QoS::AtLeastOnce, true)
    );
}

#[test]
fn no_will_and_no_credentials_unless_asked() {
    let broker = BrokerAddress::parse("mqtt://127.0.0.1").expect("url");
    for protocol in [MqttProtocol::V5, MqttProtocol::V311] {
        match SessionSpec::new(broker.clone(), "c", protocol, 65_536).options() {
            Options::V5(o) => assert!(o.last_will().is_none() && o.credentials().is_none()),
            Options::V311(o) => assert!(o.last_will().is_none() && o.credentials().is_none()),
        }
    }
}

#[test]
fn a_tool_session_is_the_agents_under_its_own_client_id() {
    let dir = tempfile::tempdir().expect("dir");
    let pw = dir.path().join("password");
    std::fs::write(&pw, "s3cret\n").expect("write");
    let text = format!(
        "url = \"mqtt://127.0.0.1:1999\"\nkeep_alive = \"9s\"\nprotocol = \"3.1.1\"\nmax_packet = \"1MiB\"\nusername = \"u7\"\npassword_file = \"{}\"\n",
        pw.display()
    );
    let mqtt: MqttConfig = toml::from_str(&text).expect("[mqtt]");
    let s = SessionSpec::for_tool("gw-7", &mqtt, "zero").expect("spec");
    assert_eq!(s.client_id, format!("gw-7-zero-{}", std::process::id()));
    assert_eq!(
        (s.protocol, s.max_packet, s.keep_alive, s.broker.port),
        (MqttProtocol::V311, 1 << 20, Duration::from_secs(9), 1999)
    );
    let (user, password) = s.credentials.as_ref().expect("credentials");
    assert_eq!((user.as_str(), password.expose()), ("u7", "s3cret"));
    assert!(s.tls.is_none() && s.will.is_none());
    std::fs::remove_file(&pw).expect("rm");
    let e = SessionSpec::for_tool("gw-7", &mqtt, "zero").expect_err("no password file");
    assert!(e.to_string().contains("password"), "{e}");
}

#[test]
fn reason_codes_below_0x80_are_acceptance() {
    use v5p::PubAckReason as R;
    assert!(accepted(puback_code(&R::Success)));
    assert!(accepted(puback_code(&R::NoMatchingSubscribers)));
    for refused in [R::NotAuthorized, R::QuotaExceeded, R::UnspecifiedError] {
        assert!(!accepted(puback_code(&refused)), "{refused:?}");
    }
}

#[test]
fn oversize_errors_of_both_versions_are_recognised() {
    let e = v311_error(
        rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::Error::PayloadSizeLimitExceeded(1 << 20),
        )),
        262_144,
    );
    assert!(matches!(
        e,
        SessionError::Oversize {
            size: 1_048_576,
            limit: 262_144
        }
    ));
    assert!(e.to_string().contains("message_size_limit 262144"), "{e}");
    let e = v5_error(
        rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::Deserialization(
            rumqttc::v5::mqttbytes::Error::PayloadSizeLimitExceeded {
                pkt_size: 5000,
                max: 4096,
            },
        )),
        4096,
    );
    assert!(matches!(
        e,
        SessionError::Oversize {
            size: 5000,
            limit: 4096
        }
    ));
    let e = v311_error(
        rumqttc::ConnectionError::Io(std::io::Error::other("reset")),
        1,
    );
    assert!(matches!(e, SessionError::Connection(_)));
}
