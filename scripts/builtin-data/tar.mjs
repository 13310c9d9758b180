// A minimal ustar writer for webdataset shards: regular files only, fixed mode and mtime so that the same crops
// give byte-identical shards.

import { closeSync, openSync, renameSync, writeSync } from 'node:fs'

function header(name, size) {
  const h = Buffer.alloc(512)
  if (Buffer.byteLength(name) > 100) throw new Error(`tar member name longer than 100 bytes: ${name}`)
  h.write(name, 0, 100, 'utf8')
  h.write('0000644\0', 100) // mode
  h.write('0000000\0', 108) // uid
  h.write('0000000\0', 116) // gid
  h.write(`${size.toString(8).padStart(11, '0')}\0`, 124)
  h.write('00000000000\0', 136) // mtime 0: reproducible shards
  h.write('        ', 148) // checksum field counts as spaces while summing
  h.write('0', 156) // regular file
  h.write('ustar\0', 257)
  h.write('00', 263)
  let sum = 0
  for (const b of h) sum += b
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148)
  return h
}

/** Writes `path` (via `path.partial`, renamed when complete) from `[name, Buffer]` members. */
export function writeTar(path, members) {
  const partial = `${path}.partial`
  const fd = openSync(partial, 'w')
  try {
    for (const [name, data] of members) {
      writeSync(fd, header(name, data.length))
      writeSync(fd, data)
      const pad = (512 - (data.length % 512)) % 512
      if (pad) writeSync(fd, Buffer.alloc(pad))
    }
    writeSync(fd, Buffer.alloc(1024)) // end of archive: two zero blocks
  } finally {
    closeSync(fd)
  }
  renameSync(partial, path)
}
