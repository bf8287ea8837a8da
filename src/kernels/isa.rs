//! The instruction sets the kernels are written for, the one this CPU runs (chosen once at run
//! time, or by `TINYLLAMA_ISA`), and the number of rows the vector kernels take together.

use std::sync::OnceLock;

/// Rows that run together in the interleaved layout of the vector kernels (`quant::dot::to_groups`):
/// one row per lane of a 512-bit vector of f32.
pub const GROUP: usize = 16;

/// The instruction set the kernels run on, chosen once at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 VNNI (+VL, BW) with AVX2 and FMA.
    Avx512Vnni,
    /// AVX2 with FMA and F16C.
    Avx2,
    /// AVX2 with AVX-VNNI (`vpdpbusd` on 256-bit vectors), as Intel's client cores since Alder
    /// Lake and its E-core Xeons have it without AVX-512: the AVX2 kernels, but the quantized
    /// formats' integer sums in one instruction where AVX2 takes `vpmaddubsw` and `vpmaddwd`.
    AvxVnni,
    Scalar,
}

impl Isa {
    /// Every instruction set, best first.
    pub const ALL: [Isa; 4] = [Isa::Avx512Vnni, Isa::AvxVnni, Isa::Avx2, Isa::Scalar];

    /// The best this CPU supports, or `TINYLLAMA_ISA` (`avx512vnni`, `avxvnni`, `avx2`,
    /// `scalar`) where this CPU has it; a value it cannot honour is said on stderr, once.
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let all = Isa::all_supported();
            match Isa::requested(&all, std::env::var("TINYLLAMA_ISA").ok().as_deref()) {
                Ok(isa) => isa,
                Err(why) => {
                    eprintln!("warning: {why}; using {}", all[0].name());
                    all[0]
                }
            }
        })
    }

    /// The instruction set `TINYLLAMA_ISA` asks for among `all` (this CPU's, best first): the
    /// best where unset, an error naming the value where it is unknown or not on this CPU (so
    /// that a run asked to measure one path does not silently measure another).
    fn requested(all: &[Isa], value: Option<&str>) -> Result<Isa, String> {
        let Some(v) = value else { return Ok(all[0]) };
        if let Some(&isa) = all.iter().find(|i| i.env_name() == v) {
            return Ok(isa);
        }
        let names = |isas: &[Isa]| isas.iter().map(|i| i.env_name()).collect::<Vec<_>>().join(", ");
        Err(if Isa::ALL.iter().any(|i| i.env_name() == v) {
            format!("TINYLLAMA_ISA={v}: this CPU lacks it (it runs {})", names(all))
        } else {
            format!("TINYLLAMA_ISA={v}: unknown (one of {})", names(&Isa::ALL))
        })
    }

    pub fn best_supported() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 =
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
            if avx2
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512bw")
            {
                return Isa::Avx512Vnni;
            }
            if avx2 && is_x86_feature_detected!("avxvnni") {
                return Isa::AvxVnni;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// Every instruction set this CPU can run, best first (for tests that compare them).
    pub fn all_supported() -> Vec<Isa> {
        let best = Isa::best_supported();
        #[cfg(target_arch = "x86_64")]
        let vnni = best != Isa::Scalar && is_x86_feature_detected!("avxvnni");
        #[cfg(not(target_arch = "x86_64"))]
        let vnni = false;
        let below = Isa::ALL.iter().position(|&i| i == best).unwrap_or(Isa::ALL.len() - 1);
        Isa::ALL[below..].iter().copied().filter(|&i| i != Isa::AvxVnni || vnni).collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512Vnni => "avx512-vnni",
            Isa::AvxVnni => "avx-vnni",
            Isa::Avx2 => "avx2",
            Isa::Scalar => "scalar",
        }
    }

    /// The `TINYLLAMA_ISA` value that asks for this instruction set.
    pub fn env_name(self) -> &'static str {
        match self {
            Isa::Avx512Vnni => "avx512vnni",
            Isa::AvxVnni => "avxvnni",
            Isa::Avx2 => "avx2",
            Isa::Scalar => "scalar",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `TINYLLAMA_ISA` picks among the CPU's instruction sets; a value naming one it lacks, or
    /// none at all, is an error that says so rather than a silent fallback.
    #[test]
    fn tinyllama_isa_is_honoured_or_refused_by_name() {
        let all = [Isa::Avx2, Isa::Scalar];
        assert_eq!(Isa::requested(&all, None), Ok(Isa::Avx2));
        assert_eq!(Isa::requested(&all, Some("scalar")), Ok(Isa::Scalar));
        assert_eq!(Isa::requested(&all, Some("avx2")), Ok(Isa::Avx2));
        let lacks = Isa::requested(&all, Some("avxvnni")).unwrap_err();
        assert!(lacks.contains("avxvnni") && lacks.contains("lacks") && lacks.contains("avx2, scalar"), "{lacks}");
        let unknown = Isa::requested(&all, Some("sse4")).unwrap_err();
        assert!(unknown.contains("sse4") && unknown.contains("unknown"), "{unknown}");
    }
}
