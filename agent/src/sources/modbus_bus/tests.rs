//! Tests of [`super`].

use super::super::modbus_rtu::push_crc;
use super::*;

const T: Duration = Duration::from_millis(100);

fn lift(unit: u8, index: usize) -> BusLift {
    let text = format!(
        "[gateway]\nid = \"g\"\n[mqtt]\nurl = \"mqtt://127.0.0.1\"\n[store]\npath = \"/tmp/x\"\n[[lift]]\nid = \"lift-{unit}\"\nport = \"/dev/null\"\nunit = {unit}\ntop_floor = 10\nbottom_floor = 0\nrated_speed_mm_s = 1000\ntimeout = \"100ms\"\npoll = \"100ms\"\n"
    );
    let config = crate::config::Config::parse(&text, "t").expect("config");
    let c = config.lifts[0].clone();
    BusLift {
        lift: index,
        profile: c.register_map.clone().expect("profile"),
        config: c,
        stats: SourceStats::new(),
    }
}

fn answer(unit: u8, floor: u16) -> Vec<u8> {
    let mut regs = [0u16; 14];
    regs[1] = floor;
    let mut f = vec![unit, 0x04, 28];
    for r in regs {
        f.extend_from_slice(&r.to_be_bytes());
    }
    push_crc(&mut f);
    f
}

/// A bus created 2 ms before the returned `t0` (the line has been silent since).
fn bus(units: &[u8]) -> (BusState, Instant) {
    let t0 = Instant::now() + ms(2);
    let lifts = units.iter().enumerate().map(|(i, &u)| lift(u, i)).collect();
    (
        BusState::new(lifts, LineTiming::new(115_200, false, 1), t0 - ms(2)),
        t0,
    )
}

fn get(b: &BusState, i: usize, f: impl Fn(&SourceStats) -> &std::sync::atomic::AtomicU64) -> u64 {
    SourceStats::get(f(&b.units[i].lift.stats))
}

/// Sends what `next` asks at `now`; returns the lift index.
fn send(b: &mut BusState, now: Instant) -> usize {
    match b.next(now) {
        Next::Send { lift, .. } => {
            b.on_sent(lift, now);
            lift
        }
        other => panic!("expected a request at {now:?}, got {other:?}"),
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn a_healthy_lift_is_polled_on_its_rhythm() {
    let (mut b, t0) = bus(&[1]);
    assert_eq!(send(&mut b, t0), 0);
    b.on_bytes(t0 + ms(5), &answer(1, 7));
    match b.take_outputs().as_slice() {
        [Output::Reading { lift: 0, reading }] => assert_eq!(reading.status.floor, 7),
        other => panic!("{other:?}"),
    }
    // Next poll due 100 ms after the first was.
    assert_eq!(b.next(t0 + ms(6)), Next::Wait(t0 + ms(98)));
    assert_eq!(send(&mut b, t0 + ms(98)), 0);
}

#[test]
fn a_late_answer_after_a_timeout_is_discarded_and_the_retry_waits_for_it() {
    let (mut b, t0) = bus(&[1]);
    send(&mut b, t0);
    let sent_end = t0 + b.timing.chars(REQUEST_LEN);
    // Timeout: the exchange ends, the retry is pending but the unit is owed.
    let after = sent_end + T;
    assert_eq!(b.next(after - ms(1)), Next::Wait(after));
    let guard = sent_end + 4 * T;
    assert_eq!(b.next(after), Next::Wait(guard), "no retry while owed");
    assert!(b.owed(0, after));
    assert_eq!(get(&b, 0, |s| &s.modbus_timeouts), 1);
    // The late answer (floor 99) arrives 1.5 x the timeout after the request.
    let late = sent_end + T * 3 / 2;
    b.on_bytes(late, &answer(1, 99));
    assert!(b.take_outputs().is_empty(), "a late answer is no reading");
    assert_eq!(get(&b, 0, |s| &s.late_answers), 1);
    assert!(!b.owed(0, late));
    // The retry goes out after the 3.5-character silence, not before.
    let silent = late + b.timing.t3_5();
    assert_eq!(b.next(late), Next::Wait(silent));
    assert_eq!(send(&mut b, silent), 0);
    assert_eq!(get(&b, 0, |s| &s.modbus_retries), 1);
    b.on_bytes(silent + ms(3), &answer(1, 4));
    match b.take_outputs().as_slice() {
        [Output::Reading { reading, .. }] => assert_eq!(reading.status.floor, 4),
        other => panic!("{other:?}"),
    }
}

#[test]
fn without_a_late_answer_the_retry_waits_out_the_guard() {
    let (mut b, t0) = bus(&[1]);
    send(&mut b, t0);
    let sent_end = t0 + b.timing.chars(REQUEST_LEN);
    let guard = sent_end + 4 * T;
    assert_eq!(b.next(sent_end + T), Next::Wait(guard));
    assert_eq!(b.next(guard - Duration::from_nanos(1)), Next::Wait(guard));
    assert_eq!(send(&mut b, guard), 0);
    // The retry times out too: the poll is lost.
    let end = guard + b.timing.chars(REQUEST_LEN) + T;
    let _ = b.next(end);
    assert_eq!(b.take_outputs(), vec![Output::Failed { lift: 0 }]);
    assert_eq!(get(&b, 0, |s| &s.polls_lost), 1);
    assert_eq!(get(&b, 0, |s| &s.modbus_timeouts), 2);
}

#[test]
fn a_late_answer_while_idle_or_in_another_units_window_is_counted_as_late() {
    let (mut b, t0) = bus(&[1, 2]);
    assert_eq!(send(&mut b, t0), 0);
    let end1 = t0 + b.timing.chars(REQUEST_LEN) + T;
    // Unit 1 times out and is owed: unit 2 goes meanwhile.
    assert_eq!(send(&mut b, end1), 1);
    // Unit 1's late answer lands in unit 2's window: unit 1's late answer, not unit 2's
    // error; unit 2's own answer is still taken.
    b.on_bytes(end1 + ms(20), &answer(1, 99));
    assert_eq!(get(&b, 0, |s| &s.late_answers), 1);
    assert_eq!(get(&b, 1, |s| &s.foreign_frames), 0);
    assert!(b.take_outputs().is_empty());
    b.on_bytes(end1 + ms(25), &answer(2, 5));
    match b.take_outputs().as_slice() {
        [Output::Reading { lift: 1, reading }] => assert_eq!(reading.status.floor, 5),
        other => panic!("{other:?}"),
    }
    // While idle: an unsolicited answer of unit 2 is late too, and never a reading.
    b.on_bytes(end1 + ms(40), &answer(2, 99));
    assert_eq!(get(&b, 1, |s| &s.late_answers), 1);
    assert!(b.take_outputs().is_empty());
    // A frame from a unit not on this bus is foreign.
    b.on_bytes(end1 + ms(60), &answer(9, 1));
    assert_eq!(get(&b, 1, |s| &s.foreign_frames), 1);
}

#[test]
fn a_crc_error_is_retried_after_the_silence_without_a_guard() {
    let (mut b, t0) = bus(&[1]);
    send(&mut b, t0);
    let mut bad = answer(1, 3);
    bad[5] ^= 0xFF;
    b.on_bytes(t0 + ms(3), &bad);
    let end = t0 + ms(3) + b.frame_silence();
    assert_eq!(b.next(t0 + ms(4)), Next::Wait(end));
    assert_eq!(send(&mut b, end), 0, "retried at once");
    assert_eq!(get(&b, 0, |s| &s.crc_errors), 1);
    assert!(!b.owed(0, end));
    // A wrong byte count from the unit is no answer either.
    let mut short = vec![1, 0x04, 2, 0, 99];
    push_crc(&mut short);
    b.on_bytes(end + ms(2), &short);
    assert!(b.take_outputs().is_empty());
    assert_eq!(get(&b, 0, |s| &s.foreign_frames), 1);
}

#[test]
fn an_exception_fails_the_poll_without_retry() {
    let (mut b, t0) = bus(&[1]);
    send(&mut b, t0);
    let mut exc = vec![1, 0x84, 0x02];
    push_crc(&mut exc);
    b.on_bytes(t0 + ms(2), &exc);
    assert_eq!(b.take_outputs(), vec![Output::Failed { lift: 0 }]);
    assert_eq!(get(&b, 0, |s| &s.modbus_exceptions), 1);
    assert_eq!(get(&b, 0, |s| &s.modbus_retries), 0);
}

#[test]
fn a_lost_lift_is_polled_once_a_second_without_retry_and_late_answers_still_never_count() {
    let (mut b, t0) = bus(&[1]);
    let mut now = t0;
    let mut sends = Vec::new();
    // Three lost polls (with retries) make the lift lost.
    while SourceStats::get(&b.units[0].lift.stats.polls_lost) < 3 {
        match b.next(now) {
            Next::Send { lift, .. } => {
                b.on_sent(lift, now);
                sends.push(now);
            }
            Next::Wait(t) => now = t,
        }
    }
    assert_eq!(sends.len(), 6);
    assert_eq!(b.units[0].failed_in_row, 3);
    // The next poll: one request, no retry, a second after the last poll began.
    let t = match b.next(now) {
        Next::Wait(t) => t,
        Next::Send { .. } => now,
    };
    assert!(t - sends[4] >= ms(1000), "{:?}", t - sends[4]);
    send(&mut b, t);
    let sent_end = t + b.timing.chars(REQUEST_LEN);
    let _ = b.next(sent_end + T);
    assert_eq!(b.take_outputs().len(), 4); // one Failed per poll
    assert_eq!(get(&b, 0, |s| &s.modbus_retries), 3);
    // Its late answer, 3 x the timeout late, arrives while idle: late, not a reading.
    b.on_bytes(sent_end + 3 * T, &answer(1, 99));
    assert_eq!(get(&b, 0, |s| &s.late_answers), 1);
    assert!(b.take_outputs().is_empty());
}

#[test]
fn a_line_that_never_falls_silent_still_gets_its_requests_out() {
    let (mut b, t0) = bus(&[1]);
    let mut now = t0;
    // A byte every millisecond, for longer than a timeout.
    for _ in 0..150 {
        b.on_bytes(now, &[0x55]);
        if let Next::Send { lift, .. } = b.next(now) {
            b.on_sent(lift, now);
            break;
        }
        now += ms(1);
    }
    assert!(
        b.exchange.is_some(),
        "the request went out after one timeout"
    );
    assert!(now >= t0 + T && now <= t0 + T + ms(2), "{:?}", now - t0);
}
