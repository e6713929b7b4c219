//! The hash ring: consistent hashing with bounded loads.
//!
//! Keys map to a fixed number of partitions (`ravel_proto::partition_of`);
//! partitions map to clusters. Each cluster stands on the ring at
//! `vnodes` points; a partition goes to the first cluster clockwise from its
//! own point that still has room, where room means fewer than
//! `ceil(partitions / clusters × load)` partitions. The same membership
//! always yields the same owners, and adding or removing a cluster moves
//! roughly the fair share of partitions and no more.

use serde::{Deserialize, Serialize};

/// The ring: its parameters (the `[ring]` section of the admin's config)
/// and the assignment of partitions to clusters they define.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HashRing {
    /// Number of partitions; fixed for the lifetime of a deployment.
    pub partitions: u32,
    /// Load factor: no cluster owns more than this × the average.
    pub load: f64,
    /// Ring points per cluster.
    pub vnodes: u32,
}

impl Default for HashRing {
    fn default() -> Self {
        Self {
            partitions: 271,
            load: 1.25,
            vnodes: 20,
        }
    }
}

impl HashRing {
    /// Most partitions one of `clusters` clusters may own.
    pub fn max_load(&self, clusters: usize) -> u32 {
        if clusters == 0 {
            return 0;
        }
        (f64::from(self.partitions) / clusters as f64 * self.load).ceil() as u32
    }

    /// The owner of every partition (index = partition) for `members`.
    /// Empty when there are no members.
    pub fn owners(&self, members: &[String]) -> Vec<String> {
        let mut members: Vec<&String> = members.iter().collect();
        members.sort();
        members.dedup();
        if members.is_empty() {
            return Vec::new();
        }
        let mut ring: Vec<(u64, usize)> = Vec::with_capacity(members.len() * self.vnodes as usize);
        for (i, m) in members.iter().enumerate() {
            for v in 0..self.vnodes.max(1) {
                ring.push((ravel_proto::key_hash(format!("{m}#{v}").as_bytes()), i));
            }
        }
        ring.sort_unstable();
        let max = self.max_load(members.len()).max(1);
        let mut loads = vec![0u32; members.len()];
        let mut owners = Vec::with_capacity(self.partitions as usize);
        for p in 0..self.partitions {
            let h = ravel_proto::key_hash(format!("partition-{p}").as_bytes());
            let mut idx = ring.partition_point(|(x, _)| *x < h) % ring.len();
            // Terminates: max × members ≥ partitions because load ≥ 1.
            loop {
                let m = ring[idx].1;
                if loads[m] < max {
                    loads[m] += 1;
                    owners.push(members[m].clone());
                    break;
                }
                idx = (idx + 1) % ring.len();
            }
        }
        owners
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("cluster-{i}")).collect()
    }

    #[test]
    fn hundred_thousand_keys_respect_the_load_bound() {
        let cfg = HashRing::default();
        let members = names(3);
        let owners = cfg.owners(&members);
        let mut partitions: HashMap<&str, u32> = HashMap::new();
        for o in &owners {
            *partitions.entry(o).or_default() += 1;
        }
        let max = cfg.max_load(3);
        for (c, n) in &partitions {
            assert!(*n <= max, "{c} owns {n} partitions, bound {max}");
        }
        let mut keys: HashMap<&str, u64> = HashMap::new();
        const N: u64 = 100_000;
        for k in 0..N {
            let p = ravel_proto::partition_of(format!("key-{k}").as_bytes(), cfg.partitions);
            *keys.entry(&owners[p as usize]).or_default() += 1;
        }
        let bound = (N as f64 / 3.0 * cfg.load) as u64;
        println!("partitions per cluster: {partitions:?} (bound {max}); keys per cluster: {keys:?} (bound {bound})");
        assert_eq!(keys.len(), 3);
        for (c, n) in &keys {
            assert!(*n <= bound, "{c} owns {n} of {N} keys, bound {bound}");
        }
    }

    #[test]
    fn same_membership_same_owners_in_any_order() {
        let cfg = HashRing::default();
        let a = cfg.owners(&names(4));
        let mut rev = names(4);
        rev.reverse();
        assert_eq!(a, cfg.owners(&rev));
        assert_eq!(a.len(), 271);
        assert!(cfg.owners(&[]).is_empty());
    }

    #[test]
    fn adding_a_cluster_moves_about_its_share() {
        let cfg = HashRing::default();
        let before = cfg.owners(&names(2));
        let after = cfg.owners(&names(3));
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        // Ideal: a third of the partitions, all of them to the new cluster.
        let ideal = 271.0 / 3.0;
        println!("adding a third cluster moves {moved} partitions (ideal {ideal:.0})");
        assert!((moved as f64) < ideal * 1.6, "{moved} partitions moved");
        assert!(
            before
                .iter()
                .zip(&after)
                .filter(|(a, b)| a != b)
                .all(|(_, b)| b == "cluster-3")
                || moved < 271 / 2,
            "partitions shuffled between old clusters"
        );
    }
}
