//! A pre-flight pass over a PyTorch zip checkpoint before candle's reader sees it: its pickle streams are
//! bounded (below), and its entries measured, so that each tensor's shape can be checked against the storage it
//! is read from before candle allocates it.
//!
//! candle's unpickler runs the stack machine in a loop, but the values it builds are nested `Object`s that it then
//! clones, formats (`{:?}` in its conversion errors) and drops recursively: a pickle nesting lists 50,000 deep
//! overflows the thread's stack, which no `catch_unwind` can catch, and kills the process. Its memo also copies a
//! value on every `BINGET`, so a few dozen opcodes that re-use a value twice double it each time. This pass runs
//! the same opcodes over a stack of (nesting depth, object count) pairs only, iteratively and without keeping any
//! value, and refuses a stream that would nest deeper than [`MAX_NESTING`] or make candle create more than
//! [`MAX_OBJECTS`] objects. The opcode set and the meaning of each one are candle's (`candle_core::pickle`), so
//! anything candle would read is scanned the way candle reads it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// Deepest nesting accepted. A `torch.save` state dict nests 5 levels (dict, rebuild call, argument tuple,
/// persistent id, storage tuple), a training checkpoint that wraps it a few more; at 100 the recursive clone,
/// format and drop of candle's values stay far inside even a 2 MiB thread stack.
pub const MAX_NESTING: u32 = 100;

/// Most objects candle may build (and clone through the memo): a state dict costs about 20 per tensor, so
/// this admits 250,000 tensors while bounding the parsed values to a few hundred MB.
pub const MAX_OBJECTS: u64 = 5_000_000;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Mark,
    Dict,
    Other,
}

/// What the scan keeps of one value: how deep it nests and how many objects it is made of.
#[derive(Debug, Clone, Copy)]
struct Shadow {
    kind: Kind,
    depth: u32,
    objects: u64,
}

const SCALAR: Shadow = Shadow { kind: Kind::Other, depth: 0, objects: 1 };
const EMPTY: Shadow = Shadow { kind: Kind::Other, depth: 1, objects: 1 };

struct Scan {
    stack: Vec<Shadow>,
    memo: HashMap<u32, Shadow>,
    /// Objects created or copied so far.
    objects: u64,
}

impl Scan {
    fn push(&mut self, s: Shadow) -> Result<(), String> {
        if s.depth > MAX_NESTING {
            return Err(format!("the pickle nests deeper than {MAX_NESTING} levels"));
        }
        self.count(1)?;
        self.stack.push(s);
        Ok(())
    }

    fn count(&mut self, n: u64) -> Result<(), String> {
        self.objects = self.objects.saturating_add(n);
        if self.objects > MAX_OBJECTS {
            return Err(format!("the pickle builds more than {MAX_OBJECTS} objects"));
        }
        Ok(())
    }

    fn pop(&mut self) -> Result<Shadow, String> {
        match self.stack.pop() {
            Some(s) if s.kind != Kind::Mark => Ok(s),
            _ => Err("malformed pickle: a value is missing from the stack".into()),
        }
    }

    fn pop_to_mark(&mut self) -> Result<Vec<Shadow>, String> {
        let mark = self.stack.iter().rposition(|s| s.kind == Kind::Mark).ok_or("malformed pickle: no MARK")?;
        let items = self.stack.split_off(mark + 1);
        self.stack.pop();
        Ok(items)
    }

    /// A new container (or call) holding `parts`.
    fn wrap(&mut self, kind: Kind, parts: &[Shadow]) -> Result<(), String> {
        let depth = 1 + parts.iter().map(|p| p.depth).max().unwrap_or(0);
        let objects = 1 + parts.iter().map(|p| p.objects).sum::<u64>();
        self.push(Shadow { kind, depth, objects })
    }

    /// `parts` added to the container on top of the stack (APPEND, SETITEM and their batch forms).
    fn extend_last(&mut self, parts: &[Shadow]) -> Result<(), String> {
        let last = self.stack.last_mut().filter(|s| s.kind != Kind::Mark).ok_or("malformed pickle: no container")?;
        for p in parts {
            last.depth = last.depth.max(p.depth + 1);
            last.objects = last.objects.saturating_add(p.objects);
        }
        if last.depth > MAX_NESTING {
            return Err(format!("the pickle nests deeper than {MAX_NESTING} levels"));
        }
        Ok(())
    }

    /// Candle's memo stores and returns copies.
    fn copy(&mut self, s: Shadow) -> Result<Shadow, String> {
        self.count(s.objects)?;
        Ok(s)
    }
}

fn read_n<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), String> {
    r.read_exact(buf).map_err(|e| format!("truncated pickle: {e}"))
}

fn skip<R: Read>(r: &mut R, n: u64) -> Result<(), String> {
    let skipped = std::io::copy(&mut r.take(n), &mut std::io::sink()).map_err(|e| e.to_string())?;
    if skipped < n {
        return Err("truncated pickle".into());
    }
    Ok(())
}

/// GLOBAL's module and class names; anything longer than 64 KiB is not a name.
fn skip_line<R: BufRead>(r: &mut R) -> Result<(), String> {
    let mut line = Vec::new();
    r.take(1 << 16).read_until(b'\n', &mut line).map_err(|e| e.to_string())?;
    if line.last() != Some(&b'\n') {
        return Err("malformed pickle: a GLOBAL name without an end of line".into());
    }
    Ok(())
}

fn u32_arg<R: Read>(r: &mut R) -> Result<u32, String> {
    let mut b = [0u8; 4];
    read_n(r, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn u8_arg<R: Read>(r: &mut R) -> Result<u8, String> {
    let mut b = [0u8; 1];
    read_n(r, &mut b)?;
    Ok(b[0])
}

/// Runs one pickle stream's opcodes over shadows until STOP.
fn scan_stream<R: BufRead>(r: &mut R) -> Result<(), String> {
    let mut s = Scan { stack: Vec::new(), memo: HashMap::new(), objects: 0 };
    loop {
        let op = u8_arg(r)?;
        match op {
            b'.' => return Ok(()),
            0x80 => skip(r, 1)?, // PROTO
            b'c' => {
                skip_line(r)?;
                skip_line(r)?;
                s.push(SCALAR)?
            }
            // BININT1, BININT2, BININT, BINFLOAT: a fixed-width argument, one scalar.
            b'K' | b'M' | b'J' | b'G' => {
                skip(r, match op { b'K' => 1, b'M' => 2, b'J' => 4, _ => 8 })?;
                s.push(SCALAR)?
            }
            b'X' => {
                let len = u32_arg(r)?;
                skip(r, len as u64)?;
                s.push(SCALAR)?
            }
            0x8a => {
                let n = u8_arg(r)?;
                skip(r, n as u64)?;
                s.push(SCALAR)?
            }
            0x88 | 0x89 | b'N' => s.push(SCALAR)?,
            b'(' => s.stack.push(Shadow { kind: Kind::Mark, depth: 0, objects: 0 }),
            // candle reads both `}` (EMPTY_DICT) and `d` (DICT) as an empty dict.
            b'}' | b'd' => s.push(Shadow { kind: Kind::Dict, ..EMPTY })?,
            b')' | b']' => s.push(EMPTY)?,
            b'Q' => {
                let id = s.pop()?;
                s.wrap(Kind::Other, &[id])?
            }
            b't' => {
                let items = s.pop_to_mark()?;
                s.wrap(Kind::Other, &items)?
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let items = (0..n).map(|_| s.pop()).collect::<Result<Vec<_>, _>>()?;
                s.wrap(Kind::Other, &items)?
            }
            b'a' => {
                let v = s.pop()?;
                s.extend_last(&[v])?
            }
            b's' => {
                let (v, k) = (s.pop()?, s.pop()?);
                s.extend_last(&[k, v])?
            }
            b'e' | b'u' => {
                let items = s.pop_to_mark()?;
                s.extend_last(&items)?
            }
            b'b' => {
                let (args, obj) = (s.pop()?, s.pop()?);
                if obj.kind == Kind::Dict && args.kind == Kind::Dict {
                    // candle merges a dict built from a dict into one dict.
                    let merged = Shadow {
                        kind: Kind::Dict,
                        depth: obj.depth.max(args.depth),
                        objects: obj.objects.saturating_add(args.objects),
                    };
                    s.push(merged)?
                } else {
                    s.wrap(Kind::Other, &[obj, args])?
                }
            }
            // REDUCE and NEWOBJ: a call of a class with arguments. (candle turns `OrderedDict()` into an empty
            // dict; counting it as a call over-estimates its depth by one, which only makes the bound stricter.)
            b'R' | 0x81 => {
                let (args, callable) = (s.pop()?, s.pop()?);
                s.wrap(Kind::Other, &[callable, args])?
            }
            b'h' | b'j' => {
                let id = if op == b'h' { u8_arg(r)? as u32 } else { u32_arg(r)? };
                let v = *s.memo.get(&id).ok_or_else(|| format!("malformed pickle: memo {id} is empty"))?;
                let v = s.copy(v)?;
                s.push(v)?
            }
            b'q' | b'r' => {
                let id = if op == b'q' { u8_arg(r)? as u32 } else { u32_arg(r)? };
                let top = *s.stack.last().ok_or("malformed pickle: nothing to memoize")?;
                let top = s.copy(top)?;
                s.memo.insert(id, top);
            }
            other => return Err(format!("unsupported pickle opcode 0x{other:02x}")),
        }
    }
}

/// Scans every `*data.pkl` of the zip checkpoint at `path` (the entries candle reads) and returns the bytes each
/// entry can deliver: its size, and for a compressed entry no more than deflate's largest ratio (1032:1) of its
/// compressed size, which the file holds. `Err` carries the reason, for the caller to wrap with the file name.
pub fn check_archive(path: &Path) -> Result<HashMap<String, u64>, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| format!("not a PyTorch zip checkpoint (torch.save format): {e}"))?;
    let names = zip
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<Result<Vec<String>, _>>()
        .map_err(|e| format!("not a PyTorch zip checkpoint (torch.save format): {e}"))?;
    let mut sizes = HashMap::new();
    for name in names {
        let entry = zip.by_name(&name).map_err(|e| format!("{name}: {e}"))?;
        let compressed = entry.compressed_size().min(file_len);
        let bound = if entry.compression() == zip::CompressionMethod::Stored { compressed } else { compressed * 1032 };
        sizes.insert(name.clone(), entry.size().min(bound));
        if name.ends_with("data.pkl") {
            scan_stream(&mut BufReader::new(entry)).map_err(|e| format!("{name}: {e}"))?;
        }
    }
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(bytes: &[u8]) -> Result<(), String> {
        scan_stream(&mut &bytes[..])
    }

    /// `depth` lists nested in one another, as `pickle.dumps` writes them (EMPTY_LIST ... APPEND).
    fn nested_lists(depth: usize) -> Vec<u8> {
        let mut p = vec![0x80, 2];
        p.extend(std::iter::repeat_n(b']', depth));
        p.extend(std::iter::repeat_n(b'a', depth - 1));
        p.push(b'.');
        p
    }

    #[test]
    fn nesting_is_measured_per_container() {
        assert!(scan(&nested_lists(MAX_NESTING as usize)).is_ok());
        assert!(scan(&nested_lists(MAX_NESTING as usize + 1)).unwrap_err().contains("deeper than"));
        // Tuples by MARK ... TUPLE and dicts by SETITEM nest the same way.
        let mut tuples = vec![0x80, 2];
        tuples.extend(std::iter::repeat_n(b'(', 200));
        tuples.extend(std::iter::repeat_n(b't', 200));
        tuples.push(b'.');
        assert!(scan(&tuples).unwrap_err().contains("deeper than"));
        let mut dicts = vec![0x80, 2];
        for _ in 0..200 {
            dicts.extend([b'}', b'N']);
        }
        for _ in 0..199 {
            dicts.push(b's');
        }
        dicts.push(b'.');
        assert!(scan(&dicts).unwrap_err().contains("deeper than"));
        // Wide is fine: 10,000 values in one list.
        let mut wide = vec![0x80, 2, b']', b'('];
        wide.extend(std::iter::repeat_n(b'N', 10_000));
        wide.extend([b'e', b'.']);
        assert!(scan(&wide).is_ok());
    }

    #[test]
    fn memo_copies_are_counted() {
        // x = []; then 40 times x = (x, x) through the memo: 2^40 objects for candle to build.
        let mut p = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..40 {
            p.extend([b'h', 0, b'h', 0, 0x86, b'q', 0]);
        }
        p.push(b'.');
        assert!(scan(&p).unwrap_err().contains("more than"));
    }

    #[test]
    fn malformed_streams_are_errors_not_panics() {
        assert!(scan(&[0x80, 2, b'a', b'.']).is_err());
        assert!(scan(&[0x80, 2, b't', b'.']).is_err());
        assert!(scan(&[0x80, 2, b'h', 7, b'.']).is_err());
        assert!(scan(&[0x80, 2, 0xff]).unwrap_err().contains("opcode 0xff"));
        assert!(scan(&[0x80, 2, b']']).unwrap_err().contains("truncated"));
    }
}
