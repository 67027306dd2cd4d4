// A host address cordond owns on the loopback interface, for jobs in other network namespaces.
//
// A container (veth + NAT, as docker sets it up) cannot reach 127.0.0.1 of the host: that is
// its own loopback. It can reach any address that is local on the host, through its default
// route. cordond puts one such address on `lo`, labelled so that `cordonctl detach` finds and
// removes exactly the addresses of its instance, and nothing an administrator added.
#pragma once

#include <string>
#include <vector>

#include "common/address.h"
#include "common/result.h"

namespace cordon {

// The label ("lo:" + at most 12 characters) marking the addresses of the instance pinned at
// pin_dir: stable across restarts, different for a second instance on the same host.
std::string local_address_label(const std::string &pin_dir);

// Adds ip/32 to `lo` under label (present already: success), and an `unreachable` route to it
// in the main table, so that a connection meant for cordond never leaves the host should the
// address vanish. IPv4 only.
Status add_local_address(const IpAddress &ip, const std::string &label);
// The IPv4 addresses on `lo` carrying label.
Result<std::vector<IpAddress>> local_addresses(const std::string &label);
// Removes ip/32 carrying label from `lo`, and its unreachable route (absent already: success).
Status remove_local_address(const IpAddress &ip, const std::string &label);
// Removes every IPv4 address on `lo` carrying label; returns how many went.
Result<size_t> remove_local_addresses(const std::string &label);

} // namespace cordon
