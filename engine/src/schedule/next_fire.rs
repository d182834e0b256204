//! [`next_fire`]: the next fire time of a cron schedule read on a timezone's wall clock,
//! daylight-saving correct.
//!
//! The cron fields are matched against wall-clock (naive local) times; each matching time is
//! then placed on the timeline. A time that happens twice (clocks fall back) counts at its
//! first occurrence only; a time that does not exist (clocks jump forward) fires at the jump.
//! Both rules keep the mapping from wall clock to instant monotonic, so every wall-clock slot
//! fires exactly once.

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};

use crate::patrol::Tz;

/// The first fire time of `schedule` strictly after `after`, with the cron fields read in `tz`.
pub fn next_fire(schedule: &cron::Schedule, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match tz {
        Tz::Utc => schedule.after(&after).next(),
        Tz::Local => next_in(schedule, &chrono::Local, after),
        Tz::Named(zone) => next_in(schedule, &zone, after),
    }
}

/// Fire times of `schedule` in `(from, to]`, at most `limit` of them, oldest first.
pub fn fires_between(
    schedule: &cron::Schedule,
    tz: Tz,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: usize,
) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    let mut at = from;
    while out.len() < limit {
        match next_fire(schedule, tz, at) {
            Some(t) if t <= to => {
                out.push(t);
                at = t;
            }
            _ => break,
        }
    }
    out
}

fn next_in<Z: TimeZone>(
    schedule: &cron::Schedule,
    zone: &Z,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    // Wall-clock times are walked as if they were UTC: `cron` then matches fields on them
    // without any timezone arithmetic of its own.
    let wall_after = after.with_timezone(zone).naive_local();
    // In a repeated hour the wall clock runs behind `after`: skip what maps before it. An hour
    // of a per-second schedule is 3,600 candidates; the bound only stops a runaway.
    schedule
        .after(&Utc.from_utc_datetime(&wall_after))
        .take(200_000)
        .filter_map(|wall| place(zone, wall.naive_utc()))
        .find(|at| *at > after)
}

/// The instant a wall-clock time stands for: the earlier of two (fall back), the jump for one
/// that does not exist (spring forward).
fn place<Z: TimeZone>(zone: &Z, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    match zone.from_local_datetime(&wall) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, b) => Some(a.with_timezone(&Utc).min(b.with_timezone(&Utc))),
        LocalResult::None => jump_over(zone, wall),
    }
}

/// The instant the clocks jumped over `wall`: the first second whose wall-clock time is later.
fn jump_over<Z: TimeZone>(zone: &Z, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    let day = chrono::Duration::days(1);
    let before = zone.from_local_datetime(&(wall - day)).earliest()?;
    let offset = i64::from(before.offset().fix().local_minus_utc());
    // Read with the offset in force before the jump, `wall` lies after the jump; a day
    // earlier lies before it. Bisect on whole seconds.
    let mut hi = wall.and_utc().timestamp() - offset;
    let mut lo = hi - day.num_seconds();
    let wall_at =
        |secs: i64| DateTime::from_timestamp(secs, 0).map(|t| t.with_timezone(zone).naive_local());
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if wall_at(mid)? >= wall {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn fires(expr: &str, zone: &str, from: &str, to: &str) -> Vec<String> {
        let schedule = crate::patrol::cron_expr::parse(expr).unwrap();
        let tz = Tz::parse(zone).unwrap();
        fires_between(&schedule, tz, utc(from), utc(to), 100)
            .into_iter()
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .collect()
    }

    #[test]
    fn new_york_spring_forward_fires_a_0230_job_once_at_the_jump() {
        // 2026-03-08: 02:00 EST becomes 03:00 EDT; 02:30 does not exist.
        assert_eq!(
            fires(
                "30 2 * * *",
                "America/New_York",
                "2026-03-07T00:00:00Z",
                "2026-03-10T00:00:00Z"
            ),
            [
                "2026-03-07T07:30:00Z", // 02:30 EST
                "2026-03-08T07:00:00Z", // the jump: 03:00 EDT
                "2026-03-09T06:30:00Z", // 02:30 EDT
            ]
        );
    }

    #[test]
    fn new_york_fall_back_fires_a_0130_job_once() {
        // 2026-11-01: 02:00 EDT becomes 01:00 EST; 01:30 happens twice.
        assert_eq!(
            fires(
                "30 1 * * *",
                "America/New_York",
                "2026-10-31T00:00:00Z",
                "2026-11-03T00:00:00Z"
            ),
            [
                "2026-10-31T05:30:00Z",
                "2026-11-01T05:30:00Z", // 01:30 EDT, the first time only
                "2026-11-02T06:30:00Z", // 01:30 EST
            ]
        );
        assert_eq!(
            fires(
                "30 2 * * *",
                "America/New_York",
                "2026-10-31T12:00:00Z",
                "2026-11-02T00:00:00Z"
            ),
            ["2026-11-01T07:30:00Z"]
        );
    }

    #[test]
    fn london_change_days_fire_each_wall_clock_slot_once() {
        // 2026-03-29: 01:00 GMT becomes 02:00 BST; 01:30 does not exist.
        assert_eq!(
            fires(
                "30 1 * * *",
                "Europe/London",
                "2026-03-28T00:00:00Z",
                "2026-03-31T00:00:00Z"
            ),
            [
                "2026-03-28T01:30:00Z",
                "2026-03-29T01:00:00Z", // the jump: 02:00 BST
                "2026-03-30T00:30:00Z", // 01:30 BST
            ]
        );
        assert_eq!(
            fires(
                "30 2 * * *",
                "Europe/London",
                "2026-03-28T12:00:00Z",
                "2026-03-30T00:00:00Z"
            ),
            ["2026-03-29T01:30:00Z"]
        );
        // 2026-10-25: 02:00 BST becomes 01:00 GMT; 01:00-01:59 happen twice.
        assert_eq!(
            fires(
                "30 1 * * *",
                "Europe/London",
                "2026-10-24T12:00:00Z",
                "2026-10-26T12:00:00Z"
            ),
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
        );
        // An hourly job: the repeated 01:00 does not fire again.
        assert_eq!(
            fires(
                "0 * * * *",
                "Europe/London",
                "2026-10-24T22:30:00Z",
                "2026-10-25T02:30:00Z"
            ),
            [
                "2026-10-24T23:00:00Z", // 00:00 BST
                "2026-10-25T00:00:00Z", // 01:00 BST
                "2026-10-25T02:00:00Z", // 02:00 GMT
            ]
        );
    }

    #[test]
    fn asking_from_inside_a_repeated_hour_does_not_fire_its_times_again() {
        // 06:10Z is 01:10 EST, the second pass of 01:xx: 01:30 already fired at 05:30Z.
        let schedule = crate::patrol::cron_expr::parse("30 1 * * *").unwrap();
        let tz = Tz::parse("America/New_York").unwrap();
        let next = next_fire(&schedule, tz, utc("2026-11-01T06:10:00Z")).unwrap();
        assert_eq!(next, utc("2026-11-02T06:30:00Z"));
    }

    #[test]
    fn seconds_schedules_and_utc_fire_on_time() {
        assert_eq!(
            fires(
                "*/2 * * * * *",
                "UTC",
                "2026-01-01T00:00:00Z",
                "2026-01-01T00:00:06Z"
            ),
            [
                "2026-01-01T00:00:02Z",
                "2026-01-01T00:00:04Z",
                "2026-01-01T00:00:06Z"
            ]
        );
        assert_eq!(
            fires(
                "0 9 * * *",
                "Asia/Kolkata",
                "2026-01-01T00:00:00Z",
                "2026-01-02T00:00:00Z"
            ),
            ["2026-01-01T03:30:00Z"]
        );
    }
}
