# The store reader and cordonctl's recording commands over it, with the generic message decoder
# (Cursor's descriptors are message_decoder's target). journal_witness.cc is linked, not run:
# the target passes --no-journal.
FUZZ_DEPS_recording := userspace/record/segment_store.cc userspace/ctl/recording_commands.cc \
	userspace/ctl/journal_witness.cc userspace/ctl/printable.cc userspace/proxy/message_decoder.cc \
	userspace/proxy/rpc.cc $(BUILD)/gen/cordon/recording.pb.cc
FUZZ_LIBS_recording := -lprotobuf -lcrypto -lsystemd -lz
