//! Property test: a model driver posts random chains; the device must pop
//! exactly those chains, in order, and its used ring and notification
//! decisions must match the spec's model.

use proptest::prelude::*;

use super::*;

/// One chain as the driver posts it.
#[derive(Clone, Debug)]
struct ChainSpec {
    /// Buffers in the descriptor table before any indirect table.
    direct: Vec<Buf>,
    /// Buffers in an indirect table (`None`: no indirect descriptor).
    table: Option<Vec<Buf>>,
}

impl ChainSpec {
    fn all(&self) -> Vec<Buf> {
        let mut v = self.direct.clone();
        if let Some(t) = &self.table {
            v.extend_from_slice(t);
        }
        v
    }
    /// Descriptors this chain takes in the descriptor table.
    fn slots(&self) -> usize {
        self.direct.len() + usize::from(self.table.is_some())
    }
}

/// `n` buffers: `readable` device-readable ones, then writable ones.
fn bufs(max: usize) -> impl Strategy<Value = Vec<Buf>> {
    (1..=max)
        .prop_flat_map(|n| {
            (
                0..=n,
                prop::collection::vec((0u64..1 << 48, 0u32..1 << 20), n),
            )
        })
        .prop_map(|(readable, raw)| {
            raw.into_iter()
                .enumerate()
                .map(|(i, (addr, len))| (addr, len, i >= readable))
                .collect()
        })
}

fn chain(max: usize, indirect: bool) -> impl Strategy<Value = ChainSpec> {
    let direct_only = bufs(max).prop_map(|direct| ChainSpec {
        direct,
        table: None,
    });
    if !indirect {
        return direct_only.boxed();
    }
    let with_table = (0..max, bufs(max)).prop_map(|(n_direct, all)| {
        // Split so that readable-before-writable holds across the boundary.
        let n_direct = n_direct.min(all.len() - 1);
        let (direct, table) = all.split_at(n_direct);
        ChainSpec {
            direct: direct.to_vec(),
            table: Some(table.to_vec()),
        }
    });
    prop_oneof![direct_only, with_table].boxed()
}

/// One round: chains posted, then used in batches.
#[derive(Clone, Debug)]
struct Round {
    chains: Vec<ChainSpec>,
    /// Used lengths, one per chain (clamped to its writable length).
    used_lens: Vec<u32>,
    /// Sizes of the add_used batches, cycled.
    batches: Vec<usize>,
    /// `used_event` the driver sets before each batch's notification check,
    /// as an offset from the device's used index.
    used_event_offsets: Vec<u16>,
    no_interrupt: bool,
}

fn round(size: u16, indirect: bool) -> impl Strategy<Value = Round> {
    let max = usize::from(size).min(8);
    (
        prop::collection::vec(chain(max, indirect), 0..=usize::from(size)),
        prop::collection::vec(any::<u32>(), usize::from(size)),
        prop::collection::vec(1usize..5, 1..4),
        prop::collection::vec(prop_oneof![0u16..4, any::<u16>()], 1..4),
        any::<bool>(),
    )
        .prop_map(
            move |(mut chains, used_lens, batches, offs, no_interrupt)| {
                // Keep the round within the descriptor table.
                let mut slots = 0;
                chains.retain(|c| {
                    slots += c.slots();
                    slots <= usize::from(size)
                });
                Round {
                    chains,
                    used_lens,
                    batches,
                    used_event_offsets: offs,
                    no_interrupt,
                }
            },
        )
}

fn scenario() -> impl Strategy<Value = (u16, u16, bool, bool, Vec<Round>)> {
    (
        0u32..=8,
        prop_oneof![65500u16..=65535, any::<u16>()],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_flat_map(|(exp, start, event_idx, indirect)| {
            let size = 1u16 << exp;
            (
                Just(size),
                Just(start),
                Just(event_idx),
                Just(indirect),
                prop::collection::vec(round(size, indirect), 1..6),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn device_pops_exactly_what_the_driver_posted(
        (size, start, event_idx, indirect, rounds) in scenario()
    ) {
        let mut d = Driver::new(size);
        let features = if event_idx { EVENT_IDX } else { 0 }
            | if indirect { INDIRECT_DESC } else { 0 };
        let mut q = d.queue(features, start);
        let mut chain = DescriptorChain::new();
        let mut used_idx = start;
        for round in rounds {
            d.next_table = INDIRECT;
            let mut expected = Vec::new();
            for c in &round.chains {
                let head = match &c.table {
                    None => d.add_chain(&c.direct),
                    Some(t) => d.add_indirect_chain(&c.direct, t),
                };
                expected.push((head, c.all(), c.table.is_some()));
            }
            // Pop everything, in order.
            let mut popped = Vec::new();
            d.log.clear();
            for (head, bufs, has_indirect) in &expected {
                prop_assert!(q.pop_into(&d.mem, &mut chain).unwrap());
                // Popping writes nothing but avail_event (§2.7.10).
                for w in d.writes() {
                    prop_assert!(event_idx, "pop wrote {:x?} without EVENT_IDX", w);
                    prop_assert_eq!((w.addr, w.len), (d.avail_event_addr(), 2));
                }
                prop_assert_eq!(chain.head_index(), *head);
                prop_assert_eq!(&shape(&chain), bufs);
                prop_assert_eq!(chain.has_indirect(), *has_indirect);
                let wlen: u64 = bufs.iter().filter(|b| b.2).map(|b| u64::from(b.1)).sum();
                prop_assert_eq!(u64::from(chain.writable_len()), wlen);
                prop_assert_eq!(chain.readable().len() + chain.writable().len(), bufs.len());
                popped.push((chain.head_index(), chain.writable_len()));
            }
            prop_assert!(!q.pop_into(&d.mem, &mut chain).unwrap());
            prop_assert_eq!(q.next_avail(), d.avail_idx);
            if event_idx {
                // Caught up: the driver is asked to notify at the next chain.
                prop_assert_eq!(d.avail_event(), d.avail_idx);
            }
            // Use them in batches; check the ring and the notification rule.
            d.set_avail_flags(if round.no_interrupt { VIRTQ_AVAIL_F_NO_INTERRUPT } else { 0 });
            let mut k = 0;
            let mut b = 0;
            while k < popped.len() {
                let n = round.batches[b % round.batches.len()].min(popped.len() - k);
                let off = round.used_event_offsets[b % round.used_event_offsets.len()];
                b += 1;
                let old = used_idx;
                for (i, &(head, wlen)) in popped[k..k + n].iter().enumerate() {
                    let len = round.used_lens[(k + i) % round.used_lens.len()] % (wlen + 1);
                    d.log.clear();
                    q.add_used(&d.mem, head, len).unwrap();
                    let writes = d.writes();
                    if let Err(e) = d.check_used_writes(&writes, used_idx, 1) {
                        prop_assert!(false, "{}", e);
                    }
                    prop_assert_eq!(d.used_elem(used_idx), (u32::from(head), len));
                    used_idx = used_idx.wrapping_add(1);
                    prop_assert_eq!(d.used_idx(), used_idx);
                }
                k += n;
                let used_event = old.wrapping_add(off);
                d.set_used_event(used_event);
                let want = if event_idx {
                    need_event(used_event, used_idx, old)
                } else {
                    !round.no_interrupt
                };
                d.log.clear();
                prop_assert_eq!(q.needs_notification(&d.mem).unwrap(), want);
                prop_assert_eq!(d.writes(), []);
                prop_assert!(!q.needs_notification(&d.mem).unwrap());
            }
            prop_assert_eq!(q.next_used(), used_idx);
        }
    }
}
