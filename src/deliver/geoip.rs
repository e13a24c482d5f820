//! geoIP in process (`geoip_database`): the enrichment stage looks the
//! address in a message's `geoip_field` up in MaxMind-format databases (the
//! `maxminddb` crate; GeoLite2/GeoIP2 City or any other layout) and merges
//! the record found under `geoip_into`, with `point: {lat, lon}` added when
//! the record has coordinates (an Elasticsearch/OpenSearch `geo_point`).
//! No HTTP hop per event, no cache needed. The databases are read into
//! memory at start, so a file changed or cut on disk
//! afterwards cannot disturb a lookup; databases are tried in order (an
//! IPv4 and an IPv6 one, say) and the first with a record wins. An address
//! that is missing, not an address, or in no database leaves the message
//! as it is.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde_json::{Map, Value, json};

pub struct GeoIp {
    readers: Vec<(String, maxminddb::Reader<Vec<u8>>)>,
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.readers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("GeoIp").field("databases", &names).finish()
    }
}

impl GeoIp {
    /// Reads each database (its metadata checked; a damaged record later is
    /// a failed lookup, never a crash); the error names the file.
    pub fn open(paths: &[String]) -> Result<GeoIp, String> {
        let mut readers = Vec::with_capacity(paths.len());
        for p in paths {
            let r = maxminddb::Reader::open_readfile(Path::new(p))
                .map_err(|e| format!("{p}: not a MaxMind database: {e}"))?;
            readers.push((p.clone(), r));
        }
        Ok(GeoIp { readers })
    }

    /// The record for `address` (an IP address, or `ip:port` / `[ip]:port`
    /// as a server sees its peer), from the first database that has one.
    pub fn lookup(&self, address: &str) -> Option<Value> {
        let ip = parse(address)?;
        self.readers.iter().find_map(|(_, r)| {
            let found = r.lookup(ip).ok()?;
            found.decode::<Value>().ok().flatten().map(with_point)
        })
    }
}

fn parse(address: &str) -> Option<IpAddr> {
    let a = address.trim();
    a.parse::<IpAddr>()
        .ok()
        .or_else(|| a.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// Adds `point: {lat, lon}` from a flat record's `latitude`/`longitude` or
/// a GeoIP2 record's `location`.
fn with_point(mut v: Value) -> Value {
    let coord = |o: &Map<String, Value>| {
        Some((o.get("latitude")?.as_f64()?, o.get("longitude")?.as_f64()?))
    };
    let Some(o) = v.as_object_mut() else { return v };
    let found = coord(o).or_else(|| coord(o.get("location")?.as_object()?));
    if let Some((lat, lon)) = found
        && !o.contains_key("point")
    {
        o.insert("point".into(), json!({"lat": lat, "lon": lon}));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_come_bare_or_with_a_port() {
        assert_eq!(parse("81.2.69.160"), "81.2.69.160".parse().ok());
        assert_eq!(parse(" 81.2.69.160:5443 "), "81.2.69.160".parse().ok());
        assert_eq!(parse("[2001:db8::1]:80"), "2001:db8::1".parse().ok());
        assert_eq!(parse("2001:db8::1"), "2001:db8::1".parse().ok());
        for bad in ["", "localhost", "1.2.3", "81.2.69.160:x", "<script>"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn coordinates_become_a_geo_point_in_either_layout() {
        let flat = with_point(json!({"city": "London", "latitude": 51.5, "longitude": -0.1}));
        assert_eq!(flat["point"], json!({"lat": 51.5, "lon": -0.1}));
        let nested = with_point(json!({"location": {"latitude": 1.0, "longitude": 2.0}}));
        assert_eq!(nested["point"], json!({"lat": 1.0, "lon": 2.0}));
        assert_eq!(with_point(json!({"city": "x"})), json!({"city": "x"}));
        assert_eq!(
            with_point(json!({"latitude": "n"})),
            json!({"latitude": "n"})
        );
        assert_eq!(with_point(json!([1])), json!([1]));
    }

    #[test]
    fn a_file_that_is_no_database_is_named() {
        let dir = std::env::temp_dir().join(format!("kbridge-geoip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("x.mmdb");
        std::fs::write(&f, b"not a database").unwrap();
        let name = f.display().to_string();
        let e = GeoIp::open(std::slice::from_ref(&name)).unwrap_err();
        assert!(
            e.starts_with(&format!("{name}: not a MaxMind database")),
            "{e}"
        );
        let missing = dir.join("none.mmdb").display().to_string();
        assert!(GeoIp::open(&[missing]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
