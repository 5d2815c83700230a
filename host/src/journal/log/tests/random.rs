//! Appends of random sizes (some larger than a segment), faults of every kind
//! armed at random, kills and restarts at random: after each step the log holds
//! exactly the acknowledged frames (`Run` checks that on every `Ok` append and
//! every restart).

use super::*;

/// xorshift64*: a fixed seed gives the same run every time.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_appends_faults_and_restarts_keep_exactly_the_acknowledged_frames() {
    let (mut failed, mut restarts, mut injected) = (0, 0, 0);
    for seed in 1..=4u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut run = Run::new(512);
        for _ in 0..250 {
            match rng.below(100) {
                0..=7 => {
                    let when = When::Nth(1 + rng.below(3));
                    match rng.below(4) {
                        0 => run.io.fail_writes(when),
                        1 => run.io.short_writes(when, rng.below(120) as usize),
                        2 => run.io.fail_syncs(when),
                        _ => run.io.no_space(when),
                    }
                }
                8..=10 => {
                    run.restart();
                    restarts += 1;
                }
                11..=12 => run.io.clear(),
                13..=15 => run.check(),
                r => {
                    let len = if r < 18 { 500 + rng.below(400) } else { 8 + rng.below(200) };
                    failed += run.append(len as usize).is_err() as u64;
                }
            }
        }
        injected += run.io.injected();
        run.restart();
        run.append(10).unwrap();
        run.restart();
    }
    println!("random runs: {failed} failed appends, {injected} faults injected, {restarts} restarts");
    assert!(failed > 20 && restarts > 10, "{failed} failed appends, {restarts} restarts");
}
