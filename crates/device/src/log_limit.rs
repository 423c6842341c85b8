//! Rate limiting of log lines about the other side's faults: a driver can
//! repeat a fault at will (break a ring, reset, break it again) and must
//! not flood the host log. The transport and every device backend count
//! with the one type here.

/// Counts events of one kind: the first `LIMIT` are logged at warn level,
/// the rest at debug level.
#[derive(Debug, Default)]
pub struct LogLimiter<const LIMIT: u32> {
    count: u32,
}

impl<const LIMIT: u32> LogLimiter<LIMIT> {
    /// How many events are logged at warn level.
    pub const LIMIT: u32 = LIMIT;

    /// Counts one event and returns the level to log it at.
    pub fn level(&mut self) -> log::Level {
        self.count = self.count.saturating_add(1);
        if self.count <= LIMIT {
            log::Level::Warn
        } else {
            log::Level::Debug
        }
    }

    /// Events counted so far (saturating).
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Whether the event [`LogLimiter::level`] just counted is the last one
    /// logged at warn level (its line may say that later ones go to debug).
    pub fn was_last_warning(&self) -> bool {
        self.count == LIMIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_limit_events_warn_then_debug() {
        let mut l = LogLimiter::<3>::default();
        let levels: Vec<_> = (0..5).map(|_| (l.level(), l.was_last_warning())).collect();
        assert_eq!(
            levels,
            [
                (log::Level::Warn, false),
                (log::Level::Warn, false),
                (log::Level::Warn, true),
                (log::Level::Debug, false),
                (log::Level::Debug, false),
            ]
        );
    }
}
