FUZZ_DEPS_message_decoder := userspace/proxy/message_decoder.cc
FUZZ_LIBS_message_decoder := -lprotobuf
# The target decodes with Cursor's real shapes: it loads the descriptor set built beside it.
$(BUILD)/fuzz/message_decoder: $(BUILD)/cursor.desc
