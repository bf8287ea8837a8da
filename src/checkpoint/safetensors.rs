//! The safetensors format, read and written by hand: an 8-byte little-endian header length, a JSON
//! header `{name: {dtype, shape, data_offsets}}`, then the raw little-endian data. Reading goes
//! tensor by tensor (no whole-file buffer); writing goes to a temporary file that is renamed into
//! place, so a file is never half-written under its final name.

use crate::files::write_atomically;
use anyhow::{ensure, Context, Result};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    BF16,
    F16,
}

impl Dtype {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "F32" => Some(Dtype::F32),
            "BF16" => Some(Dtype::BF16),
            "F16" => Some(Dtype::F16),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::BF16 => "BF16",
            Dtype::F16 => "F16",
        }
    }
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::BF16 | Dtype::F16 => 2,
        }
    }
}

#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// `None` for a dtype we do not compute with (reported when the tensor is read).
    pub dtype: Option<Dtype>,
    pub dtype_name: String,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: u64,
    pub end: u64,
}

/// An open safetensors file: its header parsed and checked against the file's size.
pub struct SafeTensorsFile {
    pub path: PathBuf,
    file: File,
    pub tensors: BTreeMap<String, TensorInfo>,
    pub metadata: Map<String, Value>,
}

impl SafeTensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let size = file.metadata()?.len();
        let mut len8 = [0u8; 8];
        file.read_exact(&mut len8)
            .with_context(|| format!("{}: too short to be a safetensors file", path.display()))?;
        let hlen = u64::from_le_bytes(len8);
        ensure!(
            hlen <= 100 << 20 && 8 + hlen <= size,
            "{}: header length {hlen} does not fit the file ({size} bytes): truncated or not safetensors",
            path.display()
        );
        let mut hbytes = vec![0u8; hlen as usize];
        file.read_exact(&mut hbytes)?;
        let header: Map<String, Value> = serde_json::from_slice(&hbytes)
            .with_context(|| format!("{}: header is not a JSON object", path.display()))?;
        let data0 = 8 + hlen;
        let mut tensors = BTreeMap::new();
        let mut metadata = Map::new();
        for (name, v) in header {
            if name == "__metadata__" {
                if let Value::Object(m) = v {
                    metadata = m;
                }
                continue;
            }
            let bad = |what: &str| anyhow::anyhow!("{}: tensor `{name}`: {what}", path.display());
            let dtype_name = v.get("dtype").and_then(Value::as_str).ok_or_else(|| bad("no dtype"))?.to_string();
            let shape: Vec<usize> = v
                .get("shape")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("no shape"))?
                .iter()
                .map(|x| x.as_u64().map(|x| x as usize))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("shape is not a list of integers"))?;
            let offs = v.get("data_offsets").and_then(Value::as_array).ok_or_else(|| bad("no data_offsets"))?;
            let (a, b) = match (offs.first().and_then(Value::as_u64), offs.get(1).and_then(Value::as_u64)) {
                (Some(a), Some(b)) if a <= b => (a, b),
                _ => return Err(bad("bad data_offsets")),
            };
            let dtype = Dtype::parse(&dtype_name);
            if let Some(dt) = dtype {
                let want = shape.iter().product::<usize>() * dt.size();
                ensure!(
                    (b - a) as usize == want,
                    "{}: tensor `{name}`: {} bytes for shape {shape:?} {dtype_name}",
                    path.display(),
                    b - a
                );
            }
            ensure!(
                data0 + b <= size,
                "{}: tensor `{name}` ends at byte {} but the file has {size}: truncated",
                path.display(),
                data0 + b
            );
            tensors.insert(name, TensorInfo { dtype, dtype_name, shape, start: data0 + a, end: data0 + b });
        }
        Ok(SafeTensorsFile { path: path.to_path_buf(), file, tensors, metadata })
    }

    pub fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors.get(name).with_context(|| format!("{}: no tensor named `{name}`", self.path.display()))
    }

    /// Reads tensor `name` into `dst` (converted to f32), checking its element count.
    pub fn read_f32_into(&self, name: &str, dst: &mut [f32]) -> Result<()> {
        let info = self.info(name)?;
        let dtype = info.dtype.with_context(|| {
            format!("{}: tensor `{name}` has dtype {}; supported: F32, BF16, F16", self.path.display(), info.dtype_name)
        })?;
        let n: usize = info.shape.iter().product();
        ensure!(n == dst.len(), "{}: tensor `{name}` has {n} elements, expected {}", self.path.display(), dst.len());
        let mut bytes = vec![0u8; (info.end - info.start) as usize];
        self.file
            .read_exact_at(&mut bytes, info.start)
            .with_context(|| format!("{}: cannot read tensor `{name}`", self.path.display()))?;
        match dtype {
            Dtype::F32 => {
                for (d, c) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                    *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            Dtype::BF16 => {
                for (d, c) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                    *d = half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
            }
            Dtype::F16 => {
                for (d, c) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                    *d = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
            }
        }
        Ok(())
    }

    /// Tensor `name` as f32 (any supported dtype), with its shape.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let info = self.info(name)?;
        let mut v = vec![0.0; info.shape.iter().product()];
        let shape = info.shape.clone();
        self.read_f32_into(name, &mut v)?;
        Ok((v, shape))
    }

    /// Tensor `name` as i64 (token ids in fixtures).
    pub fn read_i64(&self, name: &str) -> Result<(Vec<i64>, Vec<usize>)> {
        let info = self.info(name)?;
        ensure!(
            info.dtype_name == "I64",
            "{}: tensor `{name}` is {}, expected I64",
            self.path.display(),
            info.dtype_name
        );
        let mut bytes = vec![0u8; (info.end - info.start) as usize];
        self.file.read_exact_at(&mut bytes, info.start)?;
        let v = bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
        Ok((v, info.shape.clone()))
    }
}

/// One tensor to write: name, shape, f32 data (converted to the file's dtype on the way out).
/// A change made to a tensor's values as they are written.
pub type Change<'a> = &'a (dyn Fn(&mut [f32]) + Sync);

pub struct TensorOut<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: &'a [f32],
    /// Applied to a copy of `data` just before it is written (one tensor's copy at a time): a
    /// LoRA adapter's `s·B·A` added, so that merged weights are written without a merged model.
    pub plus: Option<Change<'a>>,
}

/// Writes a safetensors file atomically (temp file in the same folder, fsync, rename).
pub fn write_safetensors(
    path: &Path,
    tensors: &[TensorOut],
    dtype: Dtype,
    metadata: &Map<String, Value>,
) -> Result<()> {
    let mut header = Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), Value::Object(metadata.clone()));
    }
    let mut at = 0u64;
    for t in tensors {
        let n: usize = t.shape.iter().product();
        ensure!(n == t.data.len(), "tensor `{}`: shape {:?} does not match {} values", t.name, t.shape, t.data.len());
        let bytes = (n * dtype.size()) as u64;
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": dtype.name(), "shape": t.shape, "data_offsets": [at, at + bytes]}),
        );
        at += bytes;
    }
    let mut hjson = serde_json::to_vec(&Value::Object(header))?;
    while hjson.len() % 8 != 0 {
        hjson.push(b' ');
    }
    write_atomically(path, |w| {
        w.write_all(&(hjson.len() as u64).to_le_bytes())?;
        w.write_all(&hjson)?;
        let mut buf = Vec::with_capacity(1 << 20);
        for t in tensors {
            let changed = t.plus.map(|f| {
                let mut v = t.data.to_vec();
                f(&mut v);
                v
            });
            for chunk in changed.as_deref().unwrap_or(t.data).chunks(1 << 18) {
                buf.clear();
                match dtype {
                    Dtype::F32 => chunk.iter().for_each(|v| buf.extend_from_slice(&v.to_le_bytes())),
                    Dtype::BF16 => chunk
                        .iter()
                        .for_each(|v| buf.extend_from_slice(&half::bf16::from_f32(*v).to_bits().to_le_bytes())),
                    Dtype::F16 => chunk
                        .iter()
                        .for_each(|v| buf.extend_from_slice(&half::f16::from_f32(*v).to_bits().to_le_bytes())),
                }
                w.write_all(&buf)?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tinyllama-st-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_in_each_dtype() {
        let d = tmpdir("rt");
        let a: Vec<f32> = (0..12).map(|i| i as f32 * 0.37 - 2.0).collect();
        let b = vec![1.5f32, -0.25];
        for dt in [Dtype::F32, Dtype::BF16, Dtype::F16] {
            let p = d.join(format!("x-{}.safetensors", dt.name()));
            let ts = [
                TensorOut { name: "a".into(), shape: vec![3, 4], data: &a, plus: None },
                TensorOut { name: "b".into(), shape: vec![2], data: &b, plus: None },
            ];
            write_safetensors(&p, &ts, dt, &Map::new()).unwrap();
            let f = SafeTensorsFile::open(&p).unwrap();
            let (ra, sa) = f.read_f32("a").unwrap();
            assert_eq!(sa, vec![3, 4]);
            let tol = if dt == Dtype::F32 { 0.0 } else { 1e-2 };
            for (x, y) in ra.iter().zip(&a) {
                assert!((x - y).abs() <= tol * y.abs().max(1.0));
            }
            assert_eq!(f.read_f32("b").unwrap().0, b); // exactly representable
        }
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn truncated_file_is_a_clear_error() {
        let d = tmpdir("trunc");
        let p = d.join("m.safetensors");
        let a = vec![0.5f32; 100];
        write_safetensors(
            &p,
            &[TensorOut { name: "w".into(), shape: vec![100], data: &a, plus: None }],
            Dtype::F32,
            &Map::new(),
        )
        .unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
        let err = format!("{:#}", SafeTensorsFile::open(&p).err().unwrap());
        assert!(err.contains("m.safetensors") && err.contains("`w`") && err.contains("truncated"), "{err}");
        std::fs::write(&p, b"hello").unwrap();
        assert!(format!("{:#}", SafeTensorsFile::open(&p).err().unwrap()).contains("too short"));
        std::fs::remove_dir_all(d).unwrap();
    }
}
