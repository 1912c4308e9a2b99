//! What the engine reports goes to the dataplane segment: events into this worker's
//! event ring (full: dropped and counted, never waited on), sequence-number reservations
//! into the shared reservation table before any number of a block is used. And the
//! clock: TSC ticks turned into monotonic and wall-clock nanoseconds.

use natt_engine::event::{Event, Host, SeqReservation};
use natt_sadb::dp::{EventProducer, Reservations};

/// TSC to nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    tsc0: u64,
    hz: u64,
    wall0_ns: u64,
}

impl Clock {
    pub fn new(tsc_now: u64, hz: u64) -> Clock {
        let wall0_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Clock { tsc0: tsc_now, hz: hz.max(1), wall0_ns }
    }

    /// Nanoseconds since the clock was made.
    #[inline]
    pub fn mono_ns(&self, tsc: u64) -> u64 {
        let d = u128::from(tsc.saturating_sub(self.tsc0));
        (d * 1_000_000_000 / u128::from(self.hz)) as u64
    }

    /// Nanoseconds since the Unix epoch.
    #[inline]
    pub fn wall_ns(&self, tsc: u64) -> u64 {
        self.wall0_ns + self.mono_ns(tsc)
    }

    /// TSC ticks in `us` microseconds.
    pub fn ticks_us(&self, us: u64) -> u64 {
        (u128::from(self.hz) * u128::from(us) / 1_000_000) as u64
    }
}

/// One worker's `Host`.
pub struct ShmHost<'a> {
    events: EventProducer<'a>,
    resv: Reservations<'a>,
    /// Wall-clock time of the current loop, stamped on events.
    pub now_wall_ns: u64,
    /// Reservations the table had no room for (the SA then sends nothing).
    pub resv_failed: u64,
}

impl<'a> ShmHost<'a> {
    pub fn new(events: EventProducer<'a>, resv: Reservations<'a>) -> Self {
        ShmHost { events, resv, now_wall_ns: 0, resv_failed: 0 }
    }
}

impl Host for ShmHost<'_> {
    #[inline]
    fn event(&mut self, ev: Event) {
        // A full ring counts the loss itself.
        self.events.push(&ev, self.now_wall_ns);
    }

    fn reserve_seq(&mut self, r: SeqReservation) -> bool {
        let ok = self.resv.reserve(r.spi, r.key_fp, r.up_to);
        if !ok {
            self.resv_failed += 1;
        }
        ok
    }
}
