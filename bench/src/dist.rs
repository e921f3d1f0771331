//! Latency distributions as log-bucketed histograms, the form every benchmark keeps in its JSON
//! (`"hist": [[BUCKET_NS, COUNT], ...]`) and draws from.
//!
//! A bucket is named by its lower bound: a latency in ns cut to its 4 leading bits, so 8
//! buckets per power of two, none wider than 1/8 of its bound (exact below 16 ns). That keeps a
//! whole distribution in a few hundred bytes, exact to 12.5%, and rounds merge by adding counts.
//! `bench/c/bench.h` (`hist_bucket`) buckets the C workloads' latencies the same way; reading
//! checks that every bound is one.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::Result;

/// The bucket of `ns`, as its lower bound.
pub fn bucket(ns: u64) -> u64 {
    if ns < 16 {
        return ns;
    }
    let shift = 63 - ns.leading_zeros() - 3;
    ns >> shift << shift
}

/// The width of the bucket whose lower bound is `lower`.
fn width(lower: u64) -> u64 {
    if lower < 16 {
        1
    } else {
        1 << (63 - lower.leading_zeros() - 3)
    }
}

/// Counts per bucket (keyed by lower bound, ns).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Hist(BTreeMap<u64, u64>);

impl Hist {
    pub fn from_ns(ns: impl IntoIterator<Item = u64>) -> Hist {
        let mut h = Hist::default();
        for n in ns {
            *h.0.entry(bucket(n)).or_default() += 1;
        }
        h
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn merge(&mut self, other: &Hist) {
        for (&b, &c) in &other.0 {
            *self.0.entry(b).or_default() += c;
        }
    }

    pub fn to_json(&self) -> Value {
        json!(self.0.iter().map(|(&b, &c)| [b, c]).collect::<Vec<_>>())
    }

    /// Reads `[[BUCKET_NS, COUNT], ...]`, refusing anything that is not a bucket bound.
    pub fn from_json(v: &Value) -> Result<Hist> {
        let pairs = v.as_array().ok_or("a histogram is an array of [bucket_ns, count] pairs")?;
        let mut h = Hist::default();
        for p in pairs {
            let (b, c) = match p.as_array().map(Vec::as_slice) {
                Some([b, c]) => (b.as_u64(), c.as_u64()),
                _ => (None, None),
            };
            let (Some(b), Some(c)) = (b, c) else { return Err(format!("not a [bucket_ns, count] pair: {p}")) };
            if bucket(b) != b {
                return Err(format!("{b} ns is not a bucket bound (was the histogram bucketed another way?)"));
            }
            *h.0.entry(b).or_default() += c;
        }
        Ok(h)
    }

    /// The complementary CDF as a line through exact points, (latency in us, fraction of samples
    /// at or above it): at each occupied bucket's lower bound, and at its upper bound where the
    /// next bucket is not adjacent (the line is flat across empty buckets, and only within a
    /// bucket is the shape unknown). It starts at fraction 1 and ends at the last bucket's share.
    pub fn ccdf(&self) -> Vec<(f64, f64)> {
        let total = self.total() as f64;
        let mut above = total;
        let mut points: Vec<(f64, f64)> = vec![];
        let buckets: Vec<(u64, u64)> = self.0.iter().filter(|(_, &c)| c > 0).map(|(&b, &c)| (b, c)).collect();
        for (i, &(b, c)) in buckets.iter().enumerate() {
            points.push((b as f64 / 1e3, above / total));
            above -= c as f64;
            if buckets.get(i + 1).is_some_and(|&(next, _)| next > b + width(b)) {
                points.push(((b + width(b)) as f64 / 1e3, above / total));
            }
        }
        points
    }

    /// The smallest and largest latency the samples can have, in us (None when empty).
    pub fn range_us(&self) -> Option<(f64, f64)> {
        let lo = *self.0.keys().next()?;
        let hi = *self.0.keys().next_back()?;
        Some((lo as f64 / 1e3, (hi + width(hi)) as f64 / 1e3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_eight_per_power_of_two() {
        assert_eq!((0..16).map(bucket).collect::<Vec<_>>(), (0..16).collect::<Vec<_>>());
        assert_eq!([16, 17, 18, 19, 31, 32, 35, 36].map(bucket), [16, 16, 18, 18, 30, 32, 32, 36]);
        assert_eq!(bucket(1_000_000), 983_040); // 0b1111_0000... : 15 << 16
                                                // Every latency lies in its bucket, which is at most 1/8 of its bound wide.
        for ns in (0..20_000).chain([u32::MAX as u64, u64::MAX]) {
            let b = bucket(ns);
            assert!(b <= ns && ns - b < width(b), "{ns} in [{b}, +{})", width(b));
            assert!(b < 16 || width(b) * 8 <= b);
            assert_eq!(bucket(b), b);
        }
    }

    #[test]
    fn ccdf_of_known_samples() {
        // 1..=100 us: 49 us falls below bucket [49152, 53248) ns, so 51 of 100 samples lie at or above it.
        let h = Hist::from_ns((1..=100).map(|us| us * 1000));
        assert_eq!(h.total(), 100);
        let p = h.ccdf();
        assert_eq!(p[0], (0.96, 1.0));
        assert!(p.contains(&(49.152, 0.51)), "{p:?}");
        assert_eq!(*p.last().unwrap(), (98.304, 0.02)); // 99 and 100 us
        assert!(p.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 >= w[1].1));
        // Across empty buckets the line stays flat: 2 of 3 samples lie at or above any latency
        // from the end of 1 us's bucket to the start of 10 us's (9.216 us), 1 of 3 from there
        // on to 100 us's bucket.
        let gap = Hist::from_ns([1000, 10_000, 100_000]).ccdf();
        assert_eq!(gap, [(0.96, 1.0), (1.024, 2.0 / 3.0), (9.216, 2.0 / 3.0), (10.24, 1.0 / 3.0), (98.304, 1.0 / 3.0)]);
        assert_eq!(h.range_us(), Some((0.96, 106.496)));
        assert_eq!(Hist::default().range_us(), None);
    }

    #[test]
    fn merge_and_json_round_trip() {
        let (a, b) = (Hist::from_ns([100, 200, 5000]), Hist::from_ns([100, 70_000]));
        let mut m = a.clone();
        m.merge(&b);
        assert_eq!(m.total(), 5);
        assert_eq!(m, Hist::from_ns([100, 200, 5000, 100, 70_000]));
        let j = m.to_json();
        assert_eq!(j, json!([[96, 2], [192, 1], [4608, 1], [65536, 1]]));
        assert_eq!(Hist::from_json(&j).unwrap(), m);
        assert!(Hist::from_json(&json!([[101, 1]])).unwrap_err().contains("not a bucket bound"));
        assert!(Hist::from_json(&json!([[100]])).is_err());
        assert!(Hist::from_json(&json!({"p50_us": 1})).is_err());
    }
}
