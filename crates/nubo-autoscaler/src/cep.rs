//! Windowed statistics as Stratos' CEP computes them (§8): the average of a batch, its gradient
//! (per second, over at least one second) and its second derivative.

/// One sample: time in milliseconds and value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Milliseconds (any epoch, increasing).
    pub at_ms: u64,
    /// The value.
    pub value: f64,
}

/// The three numbers a window yields.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WindowStats {
    /// Average of the values.
    pub average: f64,
    /// Change per second from the first to the last sample.
    pub gradient: f64,
    /// Change of the gradient per second (0 with fewer than three samples).
    pub second_derivative: f64,
}

/// `(last − first) · 1000 / max(Δt, 1000 ms)`: per second, a single sample gives 0.
pub fn gradient(first: Sample, last: Sample) -> f64 {
    let dt = last.at_ms.saturating_sub(first.at_ms).max(1000) as f64;
    (last.value - first.value) * 1000.0 / dt
}

/// Average, gradient and second derivative of a batch (samples in time order).
///
/// The second derivative follows Stratos' `SecondDerivativeFinderWindowProcessor`: with n ≥ 3
/// samples, g1 = gradient(first, sample[n/2 − 1]) at the time of sample[n/2 − 1], g2 =
/// gradient(sample[n/2], last) at the time of the last sample, and the result is the gradient of
/// g2 over g1.
pub fn window(samples: &[Sample]) -> Option<WindowStats> {
    let (first, last) = (*samples.first()?, *samples.last()?);
    let average = samples.iter().map(|s| s.value).sum::<f64>() / samples.len() as f64;
    let n = samples.len();
    let second_derivative = if n >= 3 {
        let mid_a = samples[n / 2 - 1];
        let mid_b = samples[n / 2];
        let g1 = Sample {
            at_ms: mid_a.at_ms,
            value: gradient(first, mid_a),
        };
        let g2 = Sample {
            at_ms: last.at_ms,
            value: gradient(mid_b, last),
        };
        gradient(g1, g2)
    } else {
        0.0
    };
    Some(WindowStats {
        average,
        gradient: gradient(first, last),
        second_derivative,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn s(at_ms: u64, value: f64) -> Sample {
        Sample { at_ms, value }
    }

    #[test]
    fn hand_computed_windows() {
        assert_eq!(window(&[]), None);
        let one = window(&[s(0, 40.0)]).unwrap();
        assert_eq!(
            (one.average, one.gradient, one.second_derivative),
            (40.0, 0.0, 0.0)
        );
        // 10 → 30 over 4 s: +5 per second; a straight line has no second derivative.
        let line = window(&[
            s(0, 10.0),
            s(1000, 15.0),
            s(2000, 20.0),
            s(3000, 25.0),
            s(4000, 30.0),
        ])
        .unwrap();
        assert_eq!(line.average, 20.0);
        assert_eq!(line.gradient, 5.0);
        assert!(line.second_derivative.abs() < 1e-9);
        // Under a second apart: divided by one second, not by the tiny interval.
        assert_eq!(gradient(s(0, 0.0), s(100, 10.0)), 10.0);
        // Accelerating: 0, 1, 4, 9, 16 at 1 s steps. g1 = (1 − 0)/1 = 1 at t=1 s; g2 = (16 − 4)/2 = 6 at
        // t=4 s; second derivative = (6 − 1)/3.
        let acc = window(&[
            s(0, 0.0),
            s(1000, 1.0),
            s(2000, 4.0),
            s(3000, 9.0),
            s(4000, 16.0),
        ])
        .unwrap();
        assert!((acc.second_derivative - 5.0 / 3.0).abs() < 1e-9, "{acc:?}");
    }

    proptest! {
        /// The average lies between the smallest and largest value; a constant series has no slope.
        #[test]
        fn averages_are_bounded_and_constants_are_flat(values in proptest::collection::vec(0.0f64..100.0, 1..30), c in 0.0f64..100.0) {
            let samples: Vec<Sample> = values.iter().enumerate().map(|(i, v)| s(i as u64 * 1000, *v)).collect();
            let w = window(&samples).unwrap();
            let lo = values.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            prop_assert!(w.average >= lo - 1e-9 && w.average <= hi + 1e-9);
            let flat: Vec<Sample> = (0..values.len()).map(|i| s(i as u64 * 1000, c)).collect();
            let f = window(&flat).unwrap();
            prop_assert_eq!((f.gradient, f.second_derivative), (0.0, 0.0));
        }
    }
}
