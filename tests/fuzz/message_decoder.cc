// libFuzzer target for MessageDecoder. Besides crashes, leaks, hangs and undefined behaviour under
// the sanitizers, it checks what every reader of the output relies on: whatever the bytes, each
// decoding is one valid JSON document within kDecoderMaxOutput, an object for protobuf; and a JSON
// payload that parses is returned unchanged.
//
// It decodes with Cursor's shapes from the descriptor set the Makefile builds next to it
// ($(BUILD)/cursor.desc, see message_decoder.mk), or from $CORDON_DESCRIPTOR_SET.
#include "proxy/message_decoder.h"

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

using namespace cordon::proxy;
using cordon::rpc::RpcName;

namespace {

std::unique_ptr<MessageDecoder> decoder;

void check(bool ok, const char *what, const std::string &out)
{
	if (!ok) {
		std::fprintf(stderr, "invariant violated: %s\noutput: %.2000s\n", what, out.c_str());
		std::abort();
	}
}

std::string descriptor_set_path()
{
	if (const char *env = std::getenv("CORDON_DESCRIPTOR_SET"))
		return env;
	char exe[4096];
	const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
	if (n <= 0)
		return {};
	std::string path(exe, static_cast<size_t>(n));
	path.resize(path.rfind('/')); // .../fuzz
	path.resize(path.rfind('/')); // the build directory
	return path + "/cursor.desc";
}

nlohmann::json valid(const std::string &out, bool object)
{
	check(out.size() <= kDecoderMaxOutput, "output within the bound", out);
	nlohmann::json j = nlohmann::json::parse(out, nullptr, false);
	check(!j.is_discarded(), "output is JSON", out);
	check(!object || j.is_object(), "protobuf decodes to an object", out);
	return j;
}

// The RPCs whose messages carry the most structure (commands, prompts, files, MCP arguments).
const RpcName kRpcs[] = {
    {"agent.v1.AgentService", "Run"},
    {"aiserver.v1.ChatService", "StreamUnifiedChatWithTools"},
    {"aiserver.v1.BidiService", "BidiAppend"},
    {"aiserver.v1.AiService", "AvailableModels"},
};

} // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***)
{
	const std::string path = descriptor_set_path();
	auto loaded = MessageDecoder::load(path);
	if (!loaded) {
		std::fprintf(stderr, "message_decoder fuzz: %s; decoding generically only\n",
		             loaded.error().message().c_str());
		decoder = MessageDecoder::generic_only();
	} else {
		decoder = std::move(*loaded);
	}
	return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const std::string_view payload(reinterpret_cast<const char *>(data), size);

	const nlohmann::json generic = valid(decoder->to_json_generic(payload), true);
	if (generic.contains("#raw_hex"))
		check(generic["#length"] == size, "raw hex gives the payload's full length", generic.dump());
	for (const RpcName &rpc : kRpcs) {
		valid(decoder->to_json(rpc, Direction::Request, payload, false), true);
		valid(decoder->to_json(rpc, Direction::Response, payload, false), true);
	}
	valid(decoder->to_json_typed("google.protobuf.Struct", payload), true);

	const std::string json = decoder->to_json(kRpcs[0], Direction::Request, payload, true);
	valid(json, false);
	if (size <= kDecoderMaxOutput && nlohmann::json::accept(payload))
		check(json == payload, "a JSON payload is returned as it is", json);
	return 0;
}
