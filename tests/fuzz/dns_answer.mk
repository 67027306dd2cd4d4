FUZZ_DEPS_dns_answer := userspace/dns/dns_message.cc userspace/common/address.cc
FUZZ_LIBS_dns_answer := -lresolv
