// render.cpp - render a chat with llama.cpp's own Jinja engine, the way llama-server does.
//
// ftpack checks with it that a GGUF's Jinja chat template, which Ollama 0.30+ hands to llama-server
// for models without a TEMPLATE, renders a conversation to exactly the text training rendered with
// transformers. Built by scripts/llama_jinja.sh from the llama.cpp sources inside the pinned
// llama-cpp-python sdist; no ggml or llama library is built or linked.
//
// stdin: one JSON object
//   {
//     "template":              str   (required; the GGUF's tokenizer.chat_template)
//     "messages":              [ {role, content, reasoning_content?}, ... ]
//     "add_generation_prompt": bool  (default true, as in a /v1/chat/completions request)
//     "bos_token":             str   (default "")
//     "eos_token":             str   (default "")
//     "enable_thinking":       bool or absent (absent = llama-server's default: true iff the template
//                                     is detected to support thinking)
//     "chat_template_kwargs":  object (request-level kwargs, values of any JSON type)
//     "preserve_reasoning":    bool  (default true = llama-server's default)
//     "prefill_assistant":     bool  (default true = llama-server's default; a trailing assistant
//                                     message is then continued, not closed)
//     "add_bos", "add_eos":    bool  (default false; the vocab's flags: a leading bos_token /
//                                     trailing eos_token is then cut from the text)
//   }
// stdout: the rendered prompt, byte for byte. With --json:
//   {"prompt", "caps", "supports_thinking", "enable_thinking", "generation_prompt", "format"}
//
// The call chain is llama-server's (tools/server/server-common.cpp oaicompat_chat_params_parse):
// common_chat_templates_init + common_chat_templates_apply with use_jinja=true (common/chat.cpp).

#include "json.h"
#include "jinja/lexer.h"
#include "jinja/parser.h"
#include "jinja/runtime.h"
#include "jinja/value.h"
#include "jinja/caps.h"

#include "chat.h"

#include <chrono>
#include <cstdio>
#include <cstdarg>
#include <cstdlib>
#include <ctime>
#include <iostream>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <vector>

using json = common_json;

// json.cpp maps nlohmann's JSON_ASSERT to GGML_ASSERT, which calls ggml_abort (normally in libggml-base)
extern "C" void ggml_abort(const char * file, int line, const char * fmt, ...) {
    fprintf(stderr, "%s:%d: ", file, line);
    va_list args;
    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);
    fprintf(stderr, "\n");
    abort();
}

// The few libllama symbols that survive -Wl,--gc-sections in common.o/chat.o. They are only reached with a
// real llama_model (common_chat_templates_init(model != nullptr)), or on the legacy use_jinja=false path.
// Never called here; abort loudly if they ever are.
[[noreturn]] static void no_llama(const char * fn) {
    fprintf(stderr, "render: %s called, but libllama is not linked\n", fn);
    abort();
}
extern "C" {
const struct llama_vocab * llama_model_get_vocab(const struct llama_model *) { no_llama(__func__); }
const char * llama_model_chat_template(const struct llama_model *, const char *) { no_llama(__func__); }
llama_token llama_vocab_bos(const struct llama_vocab *) { no_llama(__func__); }
llama_token llama_vocab_eos(const struct llama_vocab *) { no_llama(__func__); }
bool llama_vocab_get_add_bos(const struct llama_vocab *) { no_llama(__func__); }
bool llama_vocab_get_add_eos(const struct llama_vocab *) { no_llama(__func__); }
int32_t llama_token_to_piece(const struct llama_vocab *, llama_token, char *, int32_t, int32_t, bool) { no_llama(__func__); }
int32_t llama_chat_apply_template(const char *, const struct llama_chat_message *, size_t, bool, char *, int32_t) { no_llama(__func__); }
}

// the path of llama-server: oaicompat_chat_params_parse() in tools/server/server-common.cpp
static common_chat_params render_server(const json & in, bool & enable_thinking_out, std::map<std::string, bool> & caps_out,
                                        bool & supports_thinking_out) {
    const std::string src = in.at("template").get<std::string>();
    auto tmpls = common_chat_templates_init(/* model */ nullptr, src,
                                            in.value("bos_token", std::string()),
                                            in.value("eos_token", std::string()));
    caps_out = common_chat_templates_get_caps(tmpls.get());

    // server-context.cpp: enable_thinking = (--reasoning != off) && template supports thinking
    supports_thinking_out = common_chat_templates_support_enable_thinking(tmpls.get());

    common_chat_templates_inputs inputs;
    inputs.messages              = common_chat_msgs_parse_oaicompat(in.at("messages"));
    if (in.contains("tools")) {
        inputs.tools = common_chat_tools_parse_oaicompat(in.at("tools"));
    }
    inputs.use_jinja             = true;
    inputs.add_generation_prompt = in.value("add_generation_prompt", true);
    inputs.reasoning_format      = COMMON_REASONING_FORMAT_DEEPSEEK;  // common_params default
    inputs.enable_thinking       = supports_thinking_out;
    inputs.continue_final_message = COMMON_CHAT_CONTINUATION_NONE;
    if (in.value("prefill_assistant", true) && !inputs.messages.empty() && inputs.messages.back().role == "assistant") {
        inputs.continue_final_message = COMMON_CHAT_CONTINUATION_AUTO;
        inputs.add_generation_prompt  = false;
    }

    // default_template_kwargs (arg.cpp: preserve_reasoning defaults to "true"), then request kwargs
    inputs.chat_template_kwargs["preserve_reasoning"] = in.value("preserve_reasoning", true) ? "true" : "false";
    if (in.contains("chat_template_kwargs")) {
        for (const auto & [k, v] : in.at("chat_template_kwargs").items()) {
            inputs.chat_template_kwargs[k] = v.dump();
        }
    }
    if (in.contains("enable_thinking") && in.at("enable_thinking").is_boolean()) {
        // same as a request with chat_template_kwargs: {"enable_thinking": X}
        inputs.chat_template_kwargs["enable_thinking"] = in.at("enable_thinking").get<bool>() ? "true" : "false";
    }
    auto it = inputs.chat_template_kwargs.find("enable_thinking");
    if (it != inputs.chat_template_kwargs.end()) {
        if (it->second == "true")  inputs.enable_thinking = true;
        if (it->second == "false") inputs.enable_thinking = false;
    }
    enable_thinking_out = inputs.enable_thinking;

    // the vocab's add_bos / add_eos flags cannot be given to common_chat_templates_init without a model;
    // apply the same cut as common_chat_template_direct_apply_impl afterwards
    common_chat_params params = common_chat_templates_apply(tmpls.get(), inputs);
    const std::string bos = in.value("bos_token", std::string());
    const std::string eos = in.value("eos_token", std::string());
    std::string & result = params.prompt;
    if (in.value("add_bos", false) && !bos.empty() && result.compare(0, bos.size(), bos) == 0) {
        result = result.substr(bos.size());
    }
    if (in.value("add_eos", false) && !eos.empty() && result.size() >= eos.size() &&
        result.compare(result.size() - eos.size(), eos.size(), eos) == 0) {
        result = result.substr(0, result.size() - eos.size());
    }
    return params;
}

int main(int argc, char ** argv) {
    bool json_out = false;
    for (int i = 1; i < argc; i++) {
        if (std::string(argv[i]) == "--json") {
            json_out = true;
        }
    }
    std::string text((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    try {
        json in = json::parse(text);
        bool enable_thinking = true;
        bool supports_thinking = false;
        std::map<std::string, bool> caps;
        common_chat_params p = render_server(in, enable_thinking, caps, supports_thinking);
        const std::string prompt            = p.prompt;
        const std::string generation_prompt = p.generation_prompt;
        const std::string format            = common_chat_format_name(p.format);
        if (json_out) {
            json out = json::object();
            out["prompt"] = prompt;
            json jc = json::object();
            for (const auto & [k, v] : caps) {
                jc[k] = v;
            }
            out["caps"] = jc;
            out["supports_thinking"] = supports_thinking;
            out["generation_prompt"] = generation_prompt;
            out["enable_thinking"] = enable_thinking;
            out["format"] = format;
            std::string s = out.dump();
            fwrite(s.data(), 1, s.size(), stdout);
        } else {
            fwrite(prompt.data(), 1, prompt.size(), stdout);
        }
        return 0;
    } catch (const std::exception & e) {
        fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
