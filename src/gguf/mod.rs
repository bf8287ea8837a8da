//! GGUF, llama.cpp's model file: a header of typed metadata and tensor descriptions, then the
//! tensors' bytes (ggml block layouts, aligned). Versions 2 and 3 are read; version 3 is written.
//!
//! The reader treats every header field as hostile: each length and count is checked against the
//! bytes that remain before anything is allocated for it, so a corrupt file ends in an error that
//! names the file and the key or tensor, never a panic or a huge allocation.

pub mod llama;

use crate::kernels::quant::Format;
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: usize = 32;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// An integer of any width (GGUF writers differ in the width they pick).
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            Value::U8(v) => v as i64,
            Value::I8(v) => v as i64,
            Value::U16(v) => v as i64,
            Value::I16(v) => v as i64,
            Value::U32(v) => v as i64,
            Value::I32(v) => v as i64,
            Value::U64(v) => i64::try_from(v).ok()?,
            Value::I64(v) => v,
            Value::Bool(v) => v as i64,
            _ => return None,
        })
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's description; `offset` is absolute in the file.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// ggml's `ne`: innermost (columns) first.
    pub dims: Vec<usize>,
    pub format: Format,
    pub offset: usize,
    pub size: usize,
}

impl TensorInfo {
    /// `(rows, cols)` of a matrix (1-D tensors: one row).
    pub fn rows_cols(&self) -> (usize, usize) {
        let cols = self.dims[0];
        (self.dims[1..].iter().product(), cols)
    }
}

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub map: Arc<memmap2::Mmap>,
}

/// A bounds-checked little-endian reader over the header.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        ensure!(
            n <= self.b.len() - self.at,
            "truncated: needs {n} bytes at offset {}, file has {}",
            self.at,
            self.b.len()
        );
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn remaining(&self) -> usize {
        self.b.len() - self.at
    }
    /// A count that must fit in the rest of the file at `min_each` bytes per element.
    fn count(&mut self, v2: bool, min_each: usize, what: &str) -> Result<usize> {
        let n = if v2 { self.u64()? } else { self.u32()? as u64 };
        ensure!(
            n.saturating_mul(min_each.max(1) as u64) <= self.remaining() as u64,
            "{what} count {n} cannot fit in the {} bytes that remain",
            self.remaining()
        );
        Ok(n as usize)
    }
    fn string(&mut self, v2: bool) -> Result<String> {
        let n = self.count(v2, 1, "string length")?;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).map_err(|_| anyhow::anyhow!("string at offset {} is not UTF-8", self.at - n))
    }
    fn value(&mut self, t: u32, v2: bool, depth: usize) -> Result<Value> {
        let mut n = |k: usize| self.take(k);
        Ok(match t {
            0 => Value::U8(n(1)?[0]),
            1 => Value::I8(n(1)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(n(2)?.try_into().unwrap())),
            3 => Value::I16(i16::from_le_bytes(n(2)?.try_into().unwrap())),
            4 => Value::U32(u32::from_le_bytes(n(4)?.try_into().unwrap())),
            5 => Value::I32(i32::from_le_bytes(n(4)?.try_into().unwrap())),
            6 => Value::F32(f32::from_le_bytes(n(4)?.try_into().unwrap())),
            7 => match n(1)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => bail!("boolean byte {b} is neither 0 nor 1"),
            },
            8 => Value::Str(self.string(v2)?),
            9 => {
                ensure!(depth < 4, "arrays nested too deeply");
                let et = self.u32()?;
                let min = match et {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 => {
                        if v2 {
                            8
                        } else {
                            4
                        }
                    }
                    9 => 12,
                    10..=12 => 8,
                    other => bail!("unknown array element type {other}"),
                };
                let count = self.count(v2, min, "array")?;
                let mut v = Vec::with_capacity(count);
                for _ in 0..count {
                    v.push(self.value(et, v2, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(u64::from_le_bytes(n(8)?.try_into().unwrap())),
            11 => Value::I64(i64::from_le_bytes(n(8)?.try_into().unwrap())),
            12 => Value::F64(f64::from_le_bytes(n(8)?.try_into().unwrap())),
            other => bail!("unknown metadata value type {other}"),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: the map is read-only; a file changed underneath us is the user's to avoid, as
        // with every mmap-based model loader.
        let map = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        Self::parse(path, Arc::new(map)).with_context(|| format!("{}: not a readable GGUF file", path.display()))
    }

    fn parse(path: &Path, map: Arc<memmap2::Mmap>) -> Result<Self> {
        let b: &[u8] = &map;
        let mut c = Cursor { b, at: 0 };
        ensure!(c.take(4)? == MAGIC, "bad magic (expected `GGUF`)");
        let version = c.u32()?;
        ensure!(version == 2 || version == 3, "GGUF version {version} (versions 2 and 3 are read)");
        let v2 = true;
        let n_tensors = c.count(v2, 8 + 4 + 8 + 4 + 8, "tensor")?;
        let n_kv = c.count(v2, 8 + 4, "metadata")?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(v2).with_context(|| format!("metadata key {i}"))?;
            let t = c.u32()?;
            let v = c.value(t, v2, 0).with_context(|| format!("metadata `{key}`"))?;
            metadata.insert(key, v);
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => {
                let a = v.as_i64().filter(|&a| a > 0 && (a as u64).is_power_of_two() && a <= 1 << 20);
                a.context("metadata `general.alignment` is not a power of two")? as usize
            }
        };
        let mut infos = vec![];
        for i in 0..n_tensors {
            let name = c.string(v2).with_context(|| format!("tensor {i}'s name"))?;
            let nd = c.u32()? as usize;
            ensure!((1..=4).contains(&nd), "tensor `{name}`: {nd} dimensions");
            let mut dims = vec![];
            for _ in 0..nd {
                let d = c.u64()?;
                ensure!(d > 0 && d < 1 << 40, "tensor `{name}`: dimension {d}");
                dims.push(d as usize);
            }
            let t = c.u32()?;
            let format = Format::from_ggml_type(t).with_context(|| {
                format!(
                    "tensor `{name}` has ggml type {t} ({}), which is not read here: use one of {}",
                    ggml_type_name(t),
                    Format::ALL.map(|f| f.name()).join(", ")
                )
            })?;
            let off = c.u64()?;
            infos.push((name, dims, format, off));
        }
        let data_start = c.at.div_ceil(alignment) * alignment;
        let mut tensors = vec![];
        for (name, dims, format, off) in infos {
            let count = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).context("tensor size overflows")?;
            ensure!(
                dims[0] % format.block_len() == 0,
                "tensor `{name}`: rows of {} are not whole {format} blocks",
                dims[0]
            );
            let size =
                (count / format.block_len()).checked_mul(format.block_bytes()).context("tensor size overflows")?;
            ensure!(
                (off as usize).is_multiple_of(alignment),
                "tensor `{name}`: offset {off} is not aligned to {alignment}"
            );
            let start = data_start.checked_add(off as usize).context("offset overflows")?;
            ensure!(
                start.checked_add(size).map(|e| e <= b.len()).unwrap_or(false),
                "tensor `{name}` ({} {format}, {size} bytes at {start}) runs past the end of the file ({} bytes): truncated?",
                dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("×"),
                b.len()
            );
            tensors.push(TensorInfo { name, dims, format, offset: start, size });
        }
        Ok(GgufFile { path: path.to_path_buf(), version, metadata, tensors, map })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .with_context(|| format!("{}: no tensor `{name}`", self.path.display()))
    }

    pub fn bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.map[t.offset..t.offset + t.size]
    }

    /// A 1-D tensor (norm weights) as f32.
    pub fn vector_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor(name)?;
        let n: usize = t.dims.iter().product();
        let mut out = vec![0.0f32; n];
        t.format.dequantize_row(self.bytes(t), &mut out);
        Ok(out)
    }
}

/// ggml's names of the types, for messages about ones we do not read.
fn ggml_type_name(t: u32) -> &'static str {
    const NAMES: [&str; 42] = [
        "f32", "f16", "q4_0", "q4_1", "?", "?", "q5_0", "q5_1", "q8_0", "q8_1", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K",
        "q8_K", "iq2_xxs", "iq2_xs", "iq3_xxs", "iq1_s", "iq4_nl", "iq3_s", "iq2_s", "iq4_xs", "i8", "i16", "i32",
        "i64", "f64", "iq1_m", "bf16", "?", "?", "?", "tq1_0", "tq2_0", "?", "?", "?", "mxfp4", "?", "?",
    ];
    NAMES.get(t as usize).copied().unwrap_or("unknown")
}

/// A GGUF file to write: metadata in insertion order, then tensors.
#[derive(Default)]
pub struct GgufWriter {
    pub metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<usize>, Format, Vec<u8>)>,
}

fn put_str(w: &mut Vec<u8>, s: &str) {
    w.extend_from_slice(&(s.len() as u64).to_le_bytes());
    w.extend_from_slice(s.as_bytes());
}

fn put_value(w: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => w.push(*x),
        Value::I8(x) => w.push(*x as u8),
        Value::U16(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => w.push(*x as u8),
        Value::Str(s) => put_str(w, s),
        Value::Array(a) => {
            let et = a.first().map(|e| e.type_id()).unwrap_or(4);
            w.extend_from_slice(&et.to_le_bytes());
            w.extend_from_slice(&(a.len() as u64).to_le_bytes());
            a.iter().for_each(|e| put_value(w, e));
        }
    }
}

impl GgufWriter {
    pub fn set(&mut self, key: &str, v: Value) {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.to_string(), v));
    }

    /// Adds a tensor: `dims` innermost first, `bytes` in `format`'s layout.
    pub fn add_tensor(&mut self, name: &str, dims: Vec<usize>, format: Format, bytes: Vec<u8>) {
        self.tensors.push((name.to_string(), dims, format, bytes));
    }

    /// Writes the file atomically (temporary file, fsync, rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut head = Vec::new();
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut head, k);
            head.extend_from_slice(&v.type_id().to_le_bytes());
            put_value(&mut head, v);
        }
        let align = DEFAULT_ALIGNMENT;
        let mut off = 0usize;
        for (name, dims, fmt, bytes) in &self.tensors {
            put_str(&mut head, name);
            head.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| head.extend_from_slice(&(*d as u64).to_le_bytes()));
            head.extend_from_slice(&fmt.ggml_type().to_le_bytes());
            head.extend_from_slice(&(off as u64).to_le_bytes());
            off = (off + bytes.len()).div_ceil(align) * align;
        }
        head.resize(head.len().div_ceil(align) * align, 0);
        crate::files::write_atomically(path, |w| {
            w.write_all(&head)?;
            for (_, _, _, bytes) in &self.tensors {
                w.write_all(bytes)?;
                let pad = bytes.len().div_ceil(align) * align - bytes.len();
                w.write_all(&vec![0u8; pad])?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> GgufWriter {
        let mut w = GgufWriter::default();
        w.set("general.architecture", Value::Str("llama".into()));
        w.set("a.u8", Value::U8(7));
        w.set("a.arr", Value::Array(vec![Value::Str("x".into()), Value::Str("yz".into())]));
        w.set("a.f", Value::F32(0.5));
        let x: Vec<f32> = (0..64).map(|i| i as f32 * 0.1 - 3.0).collect();
        let mut q = vec![0u8; Format::Q8_0.row_bytes(64).unwrap()];
        Format::Q8_0.quantize_row(&x, &mut q);
        w.add_tensor("t.q", vec![32, 2], Format::Q8_0, q);
        w.add_tensor("t.f", vec![3], Format::F32, [1.0f32, 2.0, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect());
        w
    }

    #[test]
    fn write_then_read() {
        let dir = std::env::temp_dir().join(format!("tl-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.gguf");
        sample().write(&p).unwrap();
        let g = GgufFile::open(&p).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.get("a.u8").unwrap().as_i64(), Some(7));
        assert_eq!(g.get("a.arr").unwrap().as_array().unwrap()[1].as_str(), Some("yz"));
        assert_eq!(g.tensor("t.q").unwrap().rows_cols(), (2, 32));
        assert_eq!(g.vector_f32("t.f").unwrap(), vec![1.0, 2.0, 3.0]);
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Truncations and bit flips anywhere give an error or a file whose every field was checked,
    /// never a panic or a runaway allocation.
    #[test]
    fn corrupt_files_are_errors_not_panics() {
        let dir = std::env::temp_dir().join(format!("tl-gguf-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.gguf");
        sample().write(&good).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        let p = dir.join("bad.gguf");
        let mut rng = crate::rng::Rng::new(1);
        let mut errors = 0;
        for i in 0..600 {
            let mut b = bytes.clone();
            if i % 2 == 0 {
                b.truncate(rng.below(bytes.len() as u64) as usize);
            } else {
                for _ in 0..1 + i % 4 {
                    let k = rng.below(b.len() as u64) as usize;
                    b[k] ^= 1 << rng.below(8);
                }
            }
            std::fs::write(&p, &b).unwrap();
            let r = std::panic::catch_unwind(|| GgufFile::open(&p).map(|g| g.tensors.len()));
            match r {
                Ok(Err(e)) => {
                    errors += 1;
                    assert!(format!("{e:#}").contains("bad.gguf"), "error does not name the file: {e:#}");
                }
                Ok(Ok(_)) => {}
                Err(_) => panic!("reader panicked on corruption {i}"),
            }
        }
        assert!(errors > 300, "only {errors} of 600 corrupt files were refused");
        std::fs::remove_dir_all(&dir).ok();
    }
}
