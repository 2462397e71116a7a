"""Caption blacklists: the shipped lists and the column matcher (the loader: test_blacklist_loader.py)."""

from __future__ import annotations

import pickle

import jieba
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zhclip.blacklist.loader import (
    BUILTIN_ORDER,
    BlacklistEntry,
    available_lists,
    load_entries,
)
from zhclip.filters.blacklist import BlacklistMatcher
from zhclip.filters.blacklist_patterns import ascii_lower, without_captures
from zhclip.filters.jieba_words import jieba_words
from zhclip.pipeline.core.reasons import blacklist_reason

CATEGORY_EXAMPLES = {
    "advertising": [
        "2019新款韩版宽松毛衣女装包邮",
        "厂家直销不锈钢保温杯",
        "淘宝爆款连衣裙限时秒杀",
        "天猫旗舰店正品保证",
        "优惠券领取 满200减30",
        "双十一全场五折抢购",
        "扫码关注领取优惠",
        "招商加盟火爆进行中",
        "京东自营 新品上市",
        "特价促销 货到付款",
        "商铺出租 价格面议",
        "现货供应 一件代发",
        "全场￥99起",
        "广告位招租",
        "海外代购正品",
        "高薪招聘服务员若干名",
    ],
    "filenames": [
        "IMG_1234",
        "IMG_20190101_123456.jpg",
        "DSC01234",
        "DSCN0567",
        "P1010001",
        "微信图片_20190101123456",
        "屏幕截图 2021-03-04",
        "Screenshot_2020-01-01-12-00-00",
        "未命名-1",
        "untitled.png",
        "image001",
        "timg (3).jpeg",
        "QQ截图20190101120000",
        "mmexport1550000000000",
        "新建文件夹 - 副本",
        "1548392011234567",
        "2560x1440高清壁纸",
        "我家的猫咪.JPG",
    ],
    "watermark": [
        "图片来源：视觉中国",
        "版权所有 翻版必究",
        "shutterstock 123456789",
        "摄图网 高清图片素材",
        "千图网免抠PNG素材",
        "全景网 图片编号12345678",
        "东方IC 供图",
        "图片由站酷海洛提供",
        "gettyimages/istock",
        "昵图网 作品编号：1234567",
        "如有侵权请联系删除",
        "© 2019 All Rights Reserved",
        "带水印的风景照",
        "dreamstime.com stock photo",
        "图/新华社",
    ],
    "contact": [
        "联系电话：13812345678",
        "咨询热线 400-123-4567",
        "QQ:12345678",
        "加 vx: abc123",
        "官网 www.example.com",
        "详情访问 http://example.cn",
        "邮箱 service@example.com",
        "电话 0755-12345678",
        "扣扣 87654321",
        "欢迎来电咨询",
        "手机：138 1234 5678",
        "(010)12345678 订房热线",
        "关注公众号获取更多",
        "+86 13912345678 张经理",
    ],
    "call_to_action": ["点击查看大图", "长按识别二维码", "求点赞求转发", "分享给好友领取红包",
                       "下载APP观看", "展开全文", "上一张 下一张", "返回顶部"],
    "platform": ["责任编辑：王明", "原标题：春天来了", "本帖最后由 abc 于 2019-1-1 编辑",
                 "免责声明：本文仅供参考", "图片加载失败", "猜你喜欢", "相关阅读"],
}

# Plain descriptions of pictures, several holding a short list term inside a
# longer innocent word (广告牌, 北京东路, 出租车, 招商银行, 批发市场, 电话亭 ...).
PLAIN_DESCRIPTIONS = [
    "一只橘猫趴在窗台上晒太阳",
    "街边的巨大广告牌",
    "户外广告牌下的行人",
    "蓝天下的白色帆船",
    "北京东路的夜景",
    "南京东路步行街人来人往",
    "出租车在雨中行驶",
    "出租屋里的旧沙发",
    "招商银行大楼在阳光下",
    "热闹的水果批发市场",
    "一个老式红色电话亭",
    "打电话的女孩",
    "桌上摆着一部老式电话",
    "游客在咨询台前排队",
    "一台旧传真机放在桌上",
    "山水印象",
    "桌上的一堆糖果",
    "新时代发展成就展",
    "真正品质的生活",
    "日本店铺门口的招牌",
    "暴雨导致电力中断",
    "今天猫咪很开心",
    "不同款式的衣服挂在墙上",
    "小女孩在草地上放风筝",
    "夕阳下的金色麦田",
    "一碗热腾腾的兰州拉面",
    "雪山脚下的藏族村庄",
    "老人在公园里打太极拳",
    "一位摄影师在拍摄日落",
    "墙上挂着一幅中国地图",
    "图书馆里安静看书的学生",
    "两只小狗在沙滩上奔跑",
    "秋天的银杏叶铺满小路",
    "梅西加盟巴黎圣日耳曼",
    "火车站前的广场",
    "超市货架上的水果",
    "夜晚的上海外滩",
    "工人在工厂里加工零件",
    "新款宝马汽车停在路边",
    "市场里卖菜的老奶奶",
    "A cat sleeping on a red sofa",
    "2008年北京奥运会开幕式",
]


@pytest.fixture(scope="module")
def builtin() -> BlacklistMatcher:
    return BlacklistMatcher.from_lists()


def matcher_of(*lines: str, list_name: str = "t") -> BlacklistMatcher:
    """Matcher over entries written as list-file lines, through the real parser."""
    from zhclip.blacklist.loader import parse_list

    return BlacklistMatcher(parse_list("\n".join(lines), list_name, "<test>"))


# ---------------------------------------------------------------- lists


def test_shipped_lists_are_there_in_builtin_order():
    names = available_lists()
    assert names[: len(BUILTIN_ORDER)] == list(BUILTIN_ORDER)
    entries = load_entries()
    for name in ("advertising", "filenames", "watermark", "contact"):
        assert sum(e.list_name == name for e in entries) >= 40, name
    for name in ("call_to_action", "platform"):  # fewer, broader rules built from sets
        assert sum(e.list_name == name for e in entries) >= 25, name
    assert [e.list_name for e in entries] == sorted(
        (e.list_name for e in entries), key=names.index
    )


@pytest.mark.parametrize(
    ("category", "caption"),
    [(c, x) for c, xs in CATEGORY_EXAMPLES.items() for x in xs],
)
def test_each_list_catches_its_typical_captions(category, caption):
    matcher = BlacklistMatcher.from_lists([category])
    reason = matcher.match_one(caption)
    assert reason is not None and reason.startswith(f"blacklist:{category}:"), reason
    assert BlacklistMatcher.from_lists().match_one(caption) is not None


@pytest.mark.parametrize("caption", PLAIN_DESCRIPTIONS)
def test_plain_picture_descriptions_pass(builtin, caption):
    assert builtin.match_one(caption) is None


def test_shipped_word_terms_are_single_jieba_tokens():
    """A word term jieba splits even on its own could never hit."""
    for entry in load_entries():
        if entry.kind == "word":
            assert jieba.lcut(entry.term, HMM=False) == [entry.term], entry


# ---------------------------------------------------------- word entries


@pytest.mark.parametrize(
    ("term", "innocent", "hit"),
    [
        ("广告", "街边的巨大广告牌", "地铁站里的广告"),
        ("京东", "北京东路的夜景", "京东商城热销"),
        ("批发", "热闹的水果批发市场", "厂家批发 价格优惠"),
        ("招商", "招商银行大楼", "全国招商 诚邀合作"),
        ("出租", "出租车在雨中行驶", "商铺 出租"),
    ],
)
def test_word_terms_only_hit_whole_tokens(term, innocent, hit):
    assert term in innocent
    matcher = matcher_of(f"word:{term}")
    assert matcher.match_one(innocent) is None
    assert matcher.match_one(hit) == blacklist_reason("t", term)
    # The same term as a plain substring hits both.
    assert matcher_of(term).match_one(innocent) == blacklist_reason("t", term)


def test_word_hit_after_an_innocent_occurrence_of_the_same_term():
    matcher = matcher_of("word:广告")
    assert matcher.match_one("广告牌旁边贴着一张广告") == blacklist_reason("t", "广告")


def test_word_term_with_ascii_letters_matches_case_insensitively():
    matcher = matcher_of("word:vip")
    assert matcher.match_one("VIP 会员") == blacklist_reason("t", "vip")
    assert matcher.match_one("vipshop") is None


def test_jieba_words_cut_like_jieba():
    words = jieba_words()
    for text in [*PLAIN_DESCRIPTIONS, "IMG_1234 京东 abc123 \r\n x", "　全角空格，标点。"]:
        assert words.spans(text) == _jieba_spans(text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="广告牌北京东路出租车招商银行批发市场电话亭咨询台一只猫的在 aB1_.-，。\r\n", max_size=30))
def test_jieba_words_cut_like_jieba_on_generated_text(text):
    assert jieba_words().spans(text) == _jieba_spans(text)


def _jieba_spans(text: str) -> list[tuple[int, int]]:
    spans, position = [], 0
    for token in jieba.lcut(text, HMM=False):
        spans.append((position, position + len(token)))
        position += len(token)
    assert position == len(text)
    return spans


# ----------------------------------------------------- reasons and order


def test_reason_names_list_and_term_as_written():
    matcher = BlacklistMatcher(
        [
            BlacklistEntry("ads", "substring", "Taobao"),
            BlacklistEntry("files", "regex", r"\bIMG_\d+"),
            BlacklistEntry("shops", "word", "京东"),
        ]
    )
    assert matcher.match_one("taobao 链接") == "blacklist:ads:Taobao"
    assert matcher.match_one("img_0001") == blacklist_reason("files", r"\bIMG_\d+")
    assert matcher.match_one("京东商城") == "blacklist:shops:京东"
    assert matcher.match_one("一只猫") is None


def test_earliest_hit_wins_then_list_order():
    matcher = BlacklistMatcher(
        [
            BlacklistEntry("a", "substring", "猫"),
            BlacklistEntry("b", "substring", "橘猫"),
            BlacklistEntry("c", "regex", "只.猫"),
            BlacklistEntry("d", "substring", "只橘"),
            BlacklistEntry("e", "word", "一只"),
        ]
    )
    # 一只 (word, start 0) beats everything else.
    assert matcher.match_one("一只橘猫") == "blacklist:e:一只"
    # Without it: 只.猫 (regex) and 只橘 both start at 1; the regex is listed first.
    assert matcher.match_one("两只橘猫") == "blacklist:c:只.猫"
    # 橘猫 starts before 猫.
    assert matcher.match_one("大橘猫") == "blacklist:b:橘猫"
    assert matcher.match_one("黑猫") == "blacklist:a:猫"


def test_tie_between_lists_goes_to_the_first_list(builtin):
    # advertising has 微信, filenames has 微信图片; filenames comes first.
    assert builtin.match_one("微信图片_20190101") == "blacklist:filenames:微信图片"


def test_same_literal_in_two_lists_reports_the_first():
    matcher = BlacklistMatcher(
        [BlacklistEntry("one", "word", "京东"), BlacklistEntry("two", "substring", "京东")]
    )
    assert matcher.match_one("京东商城") == "blacklist:one:京东"
    assert matcher.match_one("北京东路") == "blacklist:two:京东"


def test_literal_only_regex_is_reported_as_written():
    matcher = matcher_of("re:(?:联系|咨询)电话", "电话")
    assert matcher.match_one("请拨打咨询电话") == blacklist_reason("t", "(?:联系|咨询)电话")


# ------------------------------------------------------ column behaviour

MIXED = [
    "一只橘猫趴在窗台上晒太阳",
    None,
    "IMG_1234.JPG",
    "",
    "街边的巨大广告牌",
    "地铁站里的广告 联系电话13812345678",
    "北京东路旁的京东快递",
    "www.Example.COM 图片来源",
    None,
    "厂家批发 包邮",
    "蓝天下的白色帆船",
    "2019新款 微信图片_2019",
    "QQ:12345678 微信 vx",
    "\r\n",
    "ſcreenshot K",
]


def test_match_array_equals_match_one(builtin):
    out = builtin.match_array(pa.array(MIXED))
    assert out.type == pa.string() and len(out) == len(MIXED)
    assert out.to_pylist() == [builtin.match_one(x) for x in MIXED]
    assert out[1].as_py() is None and out[0].as_py() is None
    assert out.null_count == sum(r is None for r in out.to_pylist())


def test_match_array_agrees_with_a_slow_reference(builtin):
    assert builtin.match_array(pa.array(MIXED)).to_pylist() == [
        _reference(builtin.entries, x) for x in MIXED
    ]


def test_match_array_accepts_column_types(builtin):
    expected = builtin.match_array(pa.array(MIXED)).to_pylist()
    for array in (
        pa.array(MIXED, pa.large_string()),
        pa.array(MIXED, pa.string_view()),
        pa.chunked_array([MIXED[:5], MIXED[5:]]),
        pa.chunked_array([MIXED[:5], MIXED[5:]]).slice(0),
    ):
        assert builtin.match_array(array).to_pylist() == expected
    sliced = pa.array(MIXED).slice(4, 6)
    assert builtin.match_array(sliced).to_pylist() == expected[4:10]
    assert builtin.match_array(pa.array([], pa.string())).to_pylist() == []
    assert builtin.match_array(pa.chunked_array([], pa.string())).to_pylist() == []
    assert builtin.match_array(pa.nulls(3)).to_pylist() == [None] * 3
    assert BlacklistMatcher([]).match_array(pa.array(["IMG_1"])).to_pylist() == [None]
    with pytest.raises(TypeError, match="string column"):
        builtin.match_array(pa.array([1, 2]))


def test_matcher_pickles_without_its_search_state(builtin):
    fresh = pickle.dumps(BlacklistMatcher.from_lists())
    builtin.match_array(pa.array(MIXED))
    used = pickle.dumps(builtin)
    assert len(used) == len(fresh)
    clone = pickle.loads(used)
    assert clone.entries == builtin.entries
    assert clone.match_array(pa.array(MIXED)).to_pylist() == builtin.match_array(
        pa.array(MIXED)
    ).to_pylist()


def test_large_user_list_takes_the_aho_corasick_path(tmp_path):
    """Thousands of literals skip the RE2 candidate pass (its DFA would crawl)."""
    import random

    rng = random.Random(7)
    alphabet = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会"
    terms = sorted({"".join(rng.choices(alphabet, k=4)) for _ in range(3000)})
    path = tmp_path / "many.txt"
    path.write_text("\n".join(terms), encoding="utf-8")
    matcher = BlacklistMatcher.from_lists([], [path])
    captions = ["".join(rng.choices(alphabet, k=24)) for _ in range(300)] + [f"前{terms[5]}后"]
    out = matcher.match_array(pa.array(captions)).to_pylist()
    assert out[-1] == blacklist_reason("many", terms[5])
    assert out == [_reference(matcher.entries, x) for x in captions]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.none(), st.text(max_size=40)), max_size=6))
def test_arbitrary_text_never_raises(builtin, captions):
    out = builtin.match_array(pa.array(captions, pa.string()))
    assert len(out) == len(captions)
    assert out.to_pylist() == [builtin.match_one(x) for x in captions]


FRAGMENTS = [
    "广告", "广告牌", "北京", "京东", "东路", "出租", "车", "招商", "银行", "批发", "市场",
    "微信", "图片", "IMG_", "img", "DSC", "0", "13812345678", "2019", ".jpg", "www.", ".com",
    "QQ", ":", "：", " ", "@", "a", "b", "电话", "咨询", "热线", "水印", "猫", "的", "，", "\n",
    "￥", "9", "满", "减", "新款", "天猫", "同款", "式", "图", "/", "截图", "屏幕",
]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.sampled_from(FRAGMENTS), max_size=8).map("".join), min_size=1, max_size=4))
def test_generated_captions_agree_with_the_reference(builtin, captions):
    out = builtin.match_array(pa.array(captions))
    assert out.to_pylist() == [_reference(builtin.entries, x) for x in captions]


# -------------------------------------------------------------- reference


def _reference(entries: tuple[BlacklistEntry, ...], caption: str | None) -> str | None:
    """Entry by entry, with RE2 for regexes and jieba.lcut for words."""
    if caption is None:
        return None
    lowered = ascii_lower(caption)
    tokens = set(_jieba_spans(caption))
    best: tuple[int, int] | None = None
    for entry_id, entry in enumerate(entries):
        starts: list[int] = []
        if entry.kind == "regex":
            found = pc.extract_regex(
                pa.array([caption]),
                pattern=f"(?i)^(?P<pre>(?s:.)*?)(?:{without_captures(entry.term)})",
            )[0]
            if found.is_valid:
                starts.append(len(found["pre"].as_py()))
        else:
            term = ascii_lower(entry.term)
            at = lowered.find(term)
            while at >= 0:
                if entry.kind == "substring" or (at, at + len(term)) in tokens:
                    starts.append(at)
                at = lowered.find(term, at + 1)
        if starts and (best is None or (min(starts), entry_id) < best):
            best = (min(starts), entry_id)
    if best is None:
        return None
    entry = entries[best[1]]
    return blacklist_reason(entry.list_name, entry.label)
