//! `acms-test-announce INSTANCE IP PORT [KEY=VALUE...]`: publishes one `_acms._tcp.local.`
//! announcement with these TXT properties, however wrong they are, until its stdin closes; for
//! the tests that check what a malformed announcement does (nothing but a log line).

use std::io::Read;

use mdns_sd::{ServiceDaemon, ServiceInfo};

const SERVICE_TYPE: &str = "_acms._tcp.local.";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [instance, ip, port, properties @ ..] = args.as_slice() else {
        return Err("usage: acms-test-announce INSTANCE IP PORT [KEY=VALUE...]".into());
    };
    let properties: Vec<(&str, &str)> =
        properties.iter().filter_map(|pair| pair.split_once('=')).collect();
    let host = format!("{instance}.local.");
    let mut service = ServiceInfo::new(
        SERVICE_TYPE,
        instance,
        &host,
        ip.as_str(),
        port.parse()?,
        &properties[..],
    )?;
    service.set_requires_probe(false);
    let fullname = service.get_fullname().to_owned();
    let daemon = ServiceDaemon::new()?;
    daemon.register(service)?;
    println!("announced {fullname}");
    // Until the test is done with it.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    let _ = daemon.shutdown();
    Ok(())
}
