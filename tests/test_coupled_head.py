"""Context regions, the coupling formulas and the branch switches of CoupledBBoxHead."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from projects.acouplenet import CoupledBBoxHead, PSRoIExtractor, context_rois
from projects.acouplenet.coupled_bbox_head import COUPLINGS, NORMALIZATIONS


def test_context_rois_hand_computed():
    rois = torch.tensor([
        [0., 40., 30., 60., 50.],   # centre (50, 40), 20x20 -> 40x40, inside the image
        [0., 0., 0., 20., 10.],     # touches the top-left corner -> clipped at 0
        [1., 80., 50., 100., 70.],  # image 1 is 90 wide, 60 high -> clipped at the bottom-right
        [1., 10., 10., 10., 10.],   # zero size stays a point
    ])
    img_sizes = torch.tensor([[100., 120.], [60., 90.]])  # (height, width)
    expected = torch.tensor([
        [0., 30., 20., 70., 60.],
        [0., 0., 0., 30., 15.],
        [1., 70., 40., 90., 60.],
        [1., 10., 10., 10., 10.],
    ])
    torch.testing.assert_close(context_rois(rois, img_sizes, 2.0), expected)
    # scale 1 is the identity for boxes inside their image
    torch.testing.assert_close(context_rois(rois[:1], img_sizes, 1.0), rois[:1])


def test_context_rois_empty():
    assert context_rois(torch.zeros(0, 5), torch.tensor([[10., 10.]])).shape == (0, 5)


def _head(**kwargs):
    cfg = dict(in_channels=8, mid_channels=6, global_channels=5, group_size=3, num_classes=4)
    cfg.update(kwargs)
    head = CoupledBBoxHead(**cfg)
    head.init_weights()
    return head


def _branch_outputs(head, local_bins, global_feats):
    """The two branches' (cls, reg) outputs before coupling, computed by hand."""
    votes = local_bins.mean(dim=(2, 3))
    local_cls, local_reg = votes[:, :head.cls_dim], votes[:, head.cls_dim:]
    g = F.relu(F.conv2d(global_feats, head.global_conv.weight, head.global_conv.bias))
    g = F.relu(F.conv2d(g, head.global_fc.weight, head.global_fc.bias)).flatten(1)
    global_out = (g @ head.fc_cls.weight.T + head.fc_cls.bias, g @ head.fc_reg.weight.T + head.fc_reg.bias)
    return (local_cls, local_reg), global_out


def _move_scales_off_identity(head):
    """With 'conv' normalisation, random scales, so that a test sees which branch got which."""
    for name in head.branch_names:
        for kind in ('cls', 'reg'):
            layer = getattr(head, f'{name}_{kind}_scale', None)
            if layer is None:  # a branch or kind the head does not normalise
                continue
            torch.nn.init.normal_(layer.weight, std=0.5)
            torch.nn.init.normal_(layer.bias, std=0.5)


def _coupled_by_hand(head, branch_outputs):
    """(cls, reg) of the coupling of ``branch_outputs``, one (cls, reg) per ``head.branch_names``, by hand."""

    def normalise(x, branch, kind):
        if branch not in head.normalized_branches or (kind == 'reg' and not head.normalize_deltas):
            return x
        if head.normalization == 'l2':
            return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)
        if head.normalization == 'conv':
            layer = getattr(head, f'{branch}_{kind}_scale')
            return x @ layer.weight.T + layer.bias
        return x

    combine = {'sum': torch.add, 'prod': torch.mul, 'max': torch.maximum}[head.coupling]
    expected = []
    for i, kind in enumerate(('cls', 'reg')):
        outs = [normalise(out[i], name, kind) for name, out in zip(head.branch_names, branch_outputs)]
        total = outs[0]
        for out in outs[1:]:
            total = combine(total, out)
        expected.append(total)
    return expected


@pytest.mark.parametrize('normalization,coupling', list(itertools.product(NORMALIZATIONS, COUPLINGS)))
def test_coupling_matches_formula(normalization, coupling):
    head = _head(normalization=normalization, coupling=coupling)
    assert head.branch_names == ('local', 'global')  # the order _branch_outputs returns them in
    if normalization == 'conv':
        _move_scales_off_identity(head)
    n = 6
    local_bins = torch.randn(n, head.cls_dim + head.reg_dim, 3, 3)
    global_feats = torch.randn(n, 2 * 6, 3, 3)  # proposal + context, 6 channels each
    cls_score, bbox_pred = head(local_bins, global_feats)
    expected_cls, expected_reg = _coupled_by_hand(head, _branch_outputs(head, local_bins, global_feats))
    torch.testing.assert_close(cls_score, expected_cls)
    torch.testing.assert_close(bbox_pred, expected_reg)
    assert cls_score.shape == (n, 5) and bbox_pred.shape == (n, 4)


@pytest.mark.parametrize('normalization', NORMALIZATIONS)
def test_branch_alone_scores_with_one_branch_normalised_as_in_the_coupling(normalization):
    head = _head(normalization=normalization, coupling='max', normalize_deltas=False)
    if normalization == 'conv':
        _move_scales_off_identity(head)
    local_bins, global_feats = torch.randn(6, 9, 3, 3), torch.randn(6, 12, 3, 3)
    coupled = head(local_bins, global_feats)
    for name, (cls, reg) in zip(head.branch_names, _branch_outputs(head, local_bins, global_feats)):
        if normalization == 'l2':
            cls = F.normalize(cls, dim=1)
        elif normalization == 'conv':
            cls = getattr(head, f'{name}_cls_scale')(cls)
        with head.branch_alone(name):
            cls_score, bbox_pred = head(local_bins, global_feats)
        torch.testing.assert_close(cls_score, cls)
        torch.testing.assert_close(bbox_pred, reg)  # normalize_deltas=False: the deltas as the branch gives them
    with pytest.raises(RuntimeError), head.branch_alone('local'):
        raise RuntimeError  # the block restores the coupling however it ends
    for after, before in zip(head(local_bins, global_feats), coupled):
        torch.testing.assert_close(after, before)
    with pytest.raises(ValueError, match=r"branch_alone\('locl'\): no such branch; the branches are 'local', 'global'"):
        with head.branch_alone('locl'):
            pass
    with pytest.raises(ValueError, match="branch_alone needs a coupled head; this one has the single branch 'local'"):
        with _head(with_global=False).branch_alone('local'):
            pass


def test_count_decisions_counts_the_agreeing_branches_and_the_branch_each_max_comes_from():
    torch.manual_seed(0)
    head = _head(normalization='conv', coupling='max')
    _move_scales_off_identity(head)
    local_bins, global_feats = torch.randn(40, 9, 3, 3), torch.randn(40, 12, 3, 3)
    with torch.no_grad():  # a background vote, so that some RoIs' top class is the background
        head.local_cls_scale.weight += 2 * torch.eye(head.cls_dim)
        local_bins[:20, head.num_classes] += 3
    (local_cls, _), (global_cls, _) = _branch_outputs(head, local_bins, global_feats)
    local_cls, global_cls = head.local_cls_scale(local_cls), head.global_cls_scale(global_cls)
    top_class = torch.maximum(local_cls, global_cls).argmax(dim=1)
    from_global = global_cls.gather(1, top_class[:, None]) > local_cls.gather(1, top_class[:, None])
    from_global, is_object = from_global.squeeze(1), top_class != head.num_classes
    local_agrees, global_agrees = local_cls.argmax(dim=1) == top_class, global_cls.argmax(dim=1) == top_class
    with head.count_decisions() as counts:
        head(local_bins, global_feats)
        with head.branch_alone('global'):  # one branch alone is not a coupling: not counted
            head(local_bins, global_feats)
    head(local_bins, global_feats)  # nor after the block
    assert list(counts) == ['agreement', 'labelled', 'correct', 'max_source']
    assert counts['labelled'].sum() == 0  # no true classes given, nothing to be right about
    expected = [[int((~from_global).sum()), int(from_global.sum())],
                [int((~from_global & is_object).sum()), int((from_global & is_object).sum())]]
    assert counts['max_source'].tolist() == expected
    assert min(expected[1]) > 0 and expected[1] != expected[0]  # both branches supply, some RoIs are background
    assert head.agreement_labels() == ('none', 'local only', 'global only', 'all')
    patterns = [~local_agrees & ~global_agrees, local_agrees & ~global_agrees, ~local_agrees & global_agrees,
                local_agrees & global_agrees]
    assert counts['agreement'].tolist() == [[int(p.sum()) for p in patterns],
                                            [int((p & is_object).sum()) for p in patterns]]
    assert counts['agreement'][0, 0] == 0  # the maximum's top class is always one branch's own

    # The sum can pick a class that neither branch ranks first.
    head = _head(normalization='none', coupling='sum')
    local_bins, global_feats = torch.zeros(2, 9, 3, 3), torch.zeros(2, 12, 3, 3)
    local_bins[:, :3] = torch.tensor([3., 0., 2.])[:, None, None]  # local ranks class 0 first, then class 2
    with torch.no_grad():
        head.fc_cls.bias.copy_(torch.tensor([0., 0., 2., 3., 0.]))  # global ranks class 3 first, then class 2
    with head.count_decisions() as counts:
        cls_score, _ = head(local_bins, global_feats)
    assert cls_score.argmax(dim=1).tolist() == [2, 2] and counts['agreement'].tolist() == [[2, 0, 0, 0], [2, 0, 0, 0]]
    assert list(counts) == ['agreement', 'labelled', 'correct']  # no maximum, no sources

    three = _head(with_global=False, local_branches=3, coupling='max')
    with three.count_decisions() as counts:
        three(torch.randn(7, 3 * 9, 3, 3))
    assert counts['max_source'].shape == (2, 3) and counts['max_source'][0].sum() == 7
    assert counts['agreement'].shape == (2, 8) and counts['agreement'][0].sum() == 7
    assert three.agreement_labels()[3] == 'local + local2 only' and three.agreement_labels()[7] == 'all'
    with pytest.raises(ValueError, match="count_decisions needs a coupled head; this one has the single branch "
                                         "'local'"):
        with _head(with_global=False, coupling='max').count_decisions():
            pass


def test_count_decisions_counts_the_right_decisions_where_the_rois_true_classes_come():
    torch.manual_seed(1)
    head = _head(normalization='conv', coupling='sum')
    _move_scales_off_identity(head)
    local_bins, global_feats = torch.randn(80, 9, 3, 3), torch.randn(80, 12, 3, 3)
    (local_cls, _), (global_cls, _) = _branch_outputs(head, local_bins, global_feats)
    local_top = head.local_cls_scale(local_cls).argmax(dim=1)
    global_top = head.global_cls_scale(global_cls).argmax(dim=1)
    top = (head.local_cls_scale(local_cls) + head.global_cls_scale(global_cls)).argmax(dim=1)
    labels = torch.randint(0, head.num_classes + 1, (80, ))
    labels[:30] = top[:30]  # some right, some wrong
    labels[30:40] = global_top[30:40]
    with head.count_decisions() as counts:
        head(local_bins, global_feats, roi_labels=labels)
        head(local_bins, global_feats)  # without true classes: counted in 'agreement' alone
    is_object = top != head.num_classes
    column = (local_top == top).long() + 2 * (global_top == top).long()
    in_column = [(column == c) & is_object for c in range(4)]
    assert counts['labelled'].tolist() == [int(m.sum()) for m in in_column]
    assert counts['agreement'][1].tolist() == [2 * int(m.sum()) for m in in_column]
    assert counts['correct'].tolist() == [[int((m & (guess == labels)).sum()) for m in in_column]
                                          for guess in (top, local_top, global_top)]
    assert 0 < counts['correct'][0].sum() < counts['labelled'].sum() and counts['correct'][2].sum() > 0
    # Where a branch's own top class is the coupled one, that branch is right exactly where the coupling is.
    assert counts['correct'][0, 3] == counts['correct'][1, 3] == counts['correct'][2, 3]
    assert counts['correct'][0, 1] == counts['correct'][1, 1] and counts['correct'][0, 2] == counts['correct'][2, 2]


def test_rois_take_the_class_of_the_gt_box_they_overlap_at_iou_0_5():
    from mmengine.structures import InstanceData

    from mmdet.structures import DetDataSample
    from mmdet.structures.bbox import HorizontalBoxes
    from projects.acouplenet.coupled_roi_head import input_gts, label_rois
    rois = torch.tensor([[0., 0., 0., 10., 10.],    # IoU 1 with the class-2 box
                         [0., 0., 0., 10., 20.],    # IoU 0.5 with it: still class 2
                         [0., 0., 0., 10., 21.],    # IoU 100 / 210: the background (4)
                         [0., 20., 20., 30., 30.],  # IoU 1 with the class-1 box, 0.5 with the class-3 one
                         [0., 50., 50., 60., 60.],  # overlaps nothing
                         [1., 0., 0., 10., 10.]])   # image 1 has no objects
    gts = [(torch.tensor([[0., 0., 10., 10.], [20., 20., 30., 30.], [20., 20., 30., 40.]]), torch.tensor([2, 1, 3])),
           (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))]
    assert label_rois(rois, gts, background=4).tolist() == [2, 2, 4, 1, 4, 4]
    assert label_rois(rois, gts, background=4, iou_thr=0.4).tolist() == [2, 2, 2, 1, 4, 4]

    # The test pipelines load the gt boxes after Resize, in the original image's coordinates.
    sample = DetDataSample(metainfo=dict(scale_factor=(0.5, 0.25)))
    sample.gt_instances = InstanceData(bboxes=HorizontalBoxes(torch.tensor([[20., 40., 60., 80.]])),
                                       labels=torch.tensor([5]))
    (boxes, classes), = input_gts([sample])
    assert boxes.tolist() == [[10., 10., 30., 20.]] and classes.tolist() == [5]
    # The flipped view of test-time augmentation: scaled, then mirrored in the 100 pixels wide input.
    sample.set_metainfo(dict(flip=True, flip_direction='horizontal', img_shape=(50, 100)))
    (boxes, _), = input_gts([sample])
    assert boxes.tolist() == [[70., 10., 90., 20.]]
    assert input_gts([sample, DetDataSample(metainfo=dict(scale_factor=(1., 1.)))]) is None  # no gt boxes loaded


@pytest.mark.parametrize('normalization', ['conv', 'l2'])
@pytest.mark.parametrize('normalized_branches,normalize_deltas', [
    (('local', ), False),  # the authors' released CoupleNet: the local class scores alone
    (('global', ), True),
    (None, False),
])
def test_coupling_normalises_only_the_chosen_outputs(normalization, normalized_branches, normalize_deltas):
    head = _head(normalization=normalization, normalized_branches=normalized_branches,
                 normalize_deltas=normalize_deltas)
    if normalization == 'conv':
        _move_scales_off_identity(head)
    local_bins, global_feats = torch.randn(6, 9, 3, 3), torch.randn(6, 12, 3, 3)
    outputs = _branch_outputs(head, local_bins, global_feats)
    cls_score, bbox_pred = head(local_bins, global_feats)
    expected_cls, expected_reg = _coupled_by_hand(head, outputs)
    torch.testing.assert_close(cls_score, expected_cls)
    torch.testing.assert_close(bbox_pred, expected_reg)
    if not normalize_deltas:  # the deltas are summed as the branches give them
        torch.testing.assert_close(bbox_pred, outputs[0][1] + outputs[1][1])
    if normalization == 'conv':
        scaled = {f'{b}_{k}_scale' for b in normalized_branches or ('local', 'global')
                  for k in (('cls', 'reg') if normalize_deltas else ('cls', ))}
        assert {name for name, _ in head.named_children() if name.endswith('_scale')} == scaled


def test_authors_normalisation_is_one_class_scale_that_learns():
    """The released CoupleNet's layout: a (C+1) -> (C+1) scale on the local scores, trained with the rest."""
    head = _head(normalized_branches=('local', ), normalize_deltas=False)
    assert [name for name, _ in head.named_children() if name.endswith('_scale')] == ['local_cls_scale']
    assert head.local_cls_scale.weight.shape == (5, 5)
    _move_scales_off_identity(head)
    local_bins, global_feats = torch.randn(4, 9, 3, 3), torch.randn(4, 12, 3, 3)
    (local_cls, local_reg), (global_cls, global_reg) = _branch_outputs(head, local_bins, global_feats)
    cls_score, bbox_pred = head(local_bins, global_feats)
    scale = head.local_cls_scale
    torch.testing.assert_close(cls_score, local_cls @ scale.weight.T + scale.bias + global_cls)
    torch.testing.assert_close(bbox_pred, local_reg + global_reg)
    (cls_score.sum() + bbox_pred.sum()).backward()
    assert head.local_cls_scale.weight.grad.abs().sum() > 0


@pytest.mark.parametrize('names', [('globl', ), (), ('local', 'local'), ('local2', )])
def test_bad_normalized_branches_name_the_branches(names):
    with pytest.raises(ValueError, match=r"normalized_branches=.* must name one or more of the branches 'local', "
                                         r"'global', each once"):
        _head(normalized_branches=names)


def test_normalized_branches_with_three_local_fcns():
    head = _head(local_branches=3, with_global=False, normalized_branches=('local2', 'local'))
    assert head.normalized_branches == ('local', 'local2')  # in branch order
    assert not hasattr(head, 'local3_cls_scale') and hasattr(head, 'local2_reg_scale')


def test_conv_normalization_starts_as_identity():
    head = _head(normalization='conv', coupling='sum')
    plain = _head(normalization='none', coupling='sum')
    plain.load_state_dict({k: v for k, v in head.state_dict().items() if 'scale' not in k})
    local_bins, global_feats = torch.randn(3, 9, 3, 3), torch.randn(3, 12, 3, 3)
    for a, b in zip(head(local_bins, global_feats), plain(local_bins, global_feats)):
        torch.testing.assert_close(a, b)


def test_single_branch_heads():
    rfcn = _head(with_global=False)
    assert not hasattr(rfcn, 'fc_cls') and not hasattr(rfcn, 'global_conv')
    local_bins = torch.randn(4, 9, 3, 3)
    cls_score, bbox_pred = rfcn(local_bins, None)
    torch.testing.assert_close(cls_score, local_bins.mean(dim=(2, 3))[:, :5])
    torch.testing.assert_close(bbox_pred, local_bins.mean(dim=(2, 3))[:, 5:])

    global_only = _head(with_local=False, with_context=False)
    assert not hasattr(global_only, 'local_cls_conv')
    assert global_only.global_conv.in_channels == 6  # no context: proposal features only
    cls_score, bbox_pred = global_only(None, torch.randn(4, 6, 3, 3))
    assert cls_score.shape == (4, 5) and bbox_pred.shape == (4, 4)
    assert global_only.map_names == ('global', )


@pytest.mark.parametrize('normalization,coupling', [('conv', 'sum'), ('l2', 'max'), ('none', 'prod')])
@pytest.mark.parametrize('with_global', [False, True])
def test_local_branches_couple_like_branches(normalization, coupling, with_global):
    """Table IV's "3x PSRoI pooling": three local FCNs, each voting on its own block of pooled channels."""
    head = _head(local_branches=3, with_global=with_global, normalization=normalization, coupling=coupling)
    names = ('local', 'local2', 'local3') + (('global', ) if with_global else ())
    assert head.branch_names == names and head.coupled
    assert head.local_cls_conv.out_channels == 9 * 5 * 3 and head.local_reg_conv.out_channels == 9 * 4 * 3
    if normalization == 'conv':
        _move_scales_off_identity(head)
    n = 4
    local_bins = torch.randn(n, 3 * (5 + 4), 3, 3)  # three branches' class bins, then their box bins
    global_feats = torch.randn(n, 12, 3, 3) if with_global else None
    votes = local_bins.mean(dim=(2, 3))
    outputs = [(votes[:, 5 * b:5 * (b + 1)], votes[:, 15 + 4 * b:15 + 4 * (b + 1)]) for b in range(3)]
    if with_global:
        outputs.append(_branch_outputs(head, local_bins[:, :9], global_feats)[1])
    expected_cls, expected_reg = _coupled_by_hand(head, outputs)
    cls_score, bbox_pred = head(local_bins, global_feats)
    torch.testing.assert_close(cls_score, expected_cls)
    torch.testing.assert_close(bbox_pred, expected_reg)


def test_local_branches_maps_are_independent_convs():
    """Branch b's PS maps are what a one-branch head with branch b's slice of the weights computes."""
    head = _head(local_branches=3, with_global=False)
    feat = torch.randn(2, 8, 5, 6)
    maps = head.forward_maps(feat)['local']
    assert maps.shape == (2, 9 * 3 * (5 + 4), 5, 6)
    single = _head(with_global=False)
    single.reduce_conv.load_state_dict(head.reduce_conv.state_dict())
    for b in range(3):
        cls_rows, reg_rows = slice(45 * b, 45 * (b + 1)), slice(36 * b, 36 * (b + 1))
        single.local_cls_conv.weight.data = head.local_cls_conv.weight[cls_rows].clone()
        single.local_cls_conv.bias.data = head.local_cls_conv.bias[cls_rows].clone()
        single.local_reg_conv.weight.data = head.local_reg_conv.weight[reg_rows].clone()
        single.local_reg_conv.bias.data = head.local_reg_conv.bias[reg_rows].clone()
        expected = single.forward_maps(feat)['local']
        torch.testing.assert_close(maps[:, cls_rows], expected[:, :45])
        torch.testing.assert_close(maps[:, 135 + 36 * b:135 + 36 * (b + 1)], expected[:, 45:])


def test_every_local_branch_learns():
    """Through the maps, PS pooling and the coupled loss, each branch's conv weights and scales get gradients."""
    head = _head(local_branches=3, with_global=False)
    feat = torch.randn(1, 8, 12, 12)
    rois = torch.tensor([[0., 4., 4., 40., 36.], [0., 20., 8., 44., 44.]])
    bins = PSRoIExtractor(roi_layer=dict(type='PSRoIAlign', output_size=3, sampling_ratio=2),
                          featmap_strides=[4])((head.forward_maps(feat)['local'], ), rois)
    cls_score, bbox_pred = head(bins, None)
    (F.cross_entropy(cls_score, torch.tensor([1, 4])) + bbox_pred.abs().sum()).backward()
    for b in range(3):
        assert head.local_cls_conv.weight.grad[45 * b:45 * (b + 1)].abs().sum() > 0, b
        assert head.local_reg_conv.weight.grad[36 * b:36 * (b + 1)].abs().sum() > 0, b
    for name in head.branch_names:
        assert getattr(head, f'{name}_cls_scale').weight.grad.abs().sum() > 0, name
        assert getattr(head, f'{name}_reg_scale').weight.grad.abs().sum() > 0, name


def test_one_local_branch_keeps_the_state_dict_names():
    """local_branches=1 is the plain head: the checkpoints of the paper configs load unchanged."""
    names = set(_head().state_dict())
    assert {'local_cls_scale.weight', 'global_cls_scale.weight', 'local_cls_conv.weight'} <= names
    # In the order of before local_branches existed: the gradient norm that clipping takes sums the parameters'
    # norms in this order, and another order rounds differently (the main job's 2000 iterations then drift).
    scales = [name for name, _ in _head().named_children() if name.endswith('_scale')]
    assert scales == ['local_cls_scale', 'global_cls_scale', 'local_reg_scale', 'global_reg_scale']
    assert not any(name.startswith('local2') for name in names)
    three = set(_head(local_branches=3).state_dict())
    assert three - names == {f'local{b}_{kind}_scale.{p}' for b in (2, 3) for kind in ('cls', 'reg')
                             for p in ('weight', 'bias')}


def test_local_context_adds_context_votes():
    head = _head(context_branch='local', normalization='none')
    assert head.global_conv.in_channels == 6  # context is not on the global branch
    local_bins, context_bins = torch.randn(2, 9, 3, 3), torch.randn(2, 9, 3, 3)
    global_feats = torch.randn(2, 6, 3, 3)
    cls_score, bbox_pred = head(local_bins, global_feats, context_bins)
    (lc, lr), (gc, gr) = _branch_outputs(head, local_bins, global_feats)
    torch.testing.assert_close(cls_score, lc + context_bins.mean(dim=(2, 3))[:, :5] + gc)
    torch.testing.assert_close(bbox_pred, lr + gr)


def test_local_context_reaches_every_local_branch():
    head = _head(local_branches=2, with_global=False, context_branch='local', normalization='none')
    local_bins, context_bins = torch.randn(3, 18, 3, 3), torch.randn(3, 18, 3, 3)  # 2 x 5 class, 2 x 4 box
    votes, context_votes = local_bins.mean(dim=(2, 3)), context_bins.mean(dim=(2, 3))
    cls_score, bbox_pred = head(local_bins, None, context_bins)
    torch.testing.assert_close(cls_score, votes[:, :5] + context_votes[:, :5] + votes[:, 5:10] + context_votes[:, 5:10])
    torch.testing.assert_close(bbox_pred, votes[:, 10:14] + votes[:, 14:18])  # boxes take no context


def test_class_specific_regression():
    head = _head(reg_class_agnostic=False, normalization='none')
    assert head.reg_dim == 16 and head.local_reg_conv.out_channels == 9 * 16
    _, bbox_pred = head(torch.randn(2, 5 + 16, 3, 3), torch.randn(2, 12, 3, 3))
    assert bbox_pred.shape == (2, 16)


@pytest.mark.parametrize('kwargs,match', [
    (dict(normalization='L2'), "normalization='L2' is invalid; allowed values are 'none', 'l2', 'conv'"),
    (dict(coupling='add'), "coupling='add' is invalid; allowed values are 'sum', 'prod', 'max'"),
    (dict(context_branch='both'), "context_branch='both' is invalid"),
    (dict(with_local=False, with_global=False), 'enable at least one branch'),
    (dict(with_context='yes'), 'with_context'),
    (dict(normalize_deltas='no'), "normalize_deltas='no' must be True or False"),
    (dict(extra_blocks=-1), "extra_blocks=-1 must be an int >= 0 (the paper's Table IV uses 1 or 2)"),
    (dict(extra_blocks=True), 'extra_blocks=True must be an int >= 0'),
    (dict(local_branches=0), "local_branches=0 must be an int >= 1 (the paper's Table IV couples 3)"),
    (dict(local_branches=2.0), 'local_branches=2.0 must be an int >= 1'),
    (dict(local_branches=3, with_local=False), 'local_branches=3 needs with_local=True'),
])
def test_bad_switches_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match.replace('(', r'\(').replace(')', r'\)')):
        _head(**kwargs)


def test_unknown_head_key_is_rejected():
    with pytest.raises(TypeError, match="unknown argument.*'couplng' \\(did you mean 'coupling'\\?\\)"):
        _head(couplng='sum')


def test_global_feature_size_checked():
    head = _head()
    with pytest.raises(ValueError, match='output_size to group_size'):
        head(torch.randn(2, 9, 3, 3), torch.randn(2, 12, 7, 7))


def test_extra_blocks_are_residual_bottlenecks_before_both_branches():
    """Table IV's head: relu(x + 1x1(relu(3x3(relu(1x1(x)))))) at a quarter of the width, on the shared map."""
    plain = _head()
    assert plain.extra_blocks is None and not any('extra_blocks' in k for k in plain.state_dict())
    head = _head(mid_channels=8, extra_blocks=2)
    blocks = list(head.extra_blocks)
    assert len(blocks) == 2
    for block in blocks:
        assert [(c.in_channels, c.out_channels, c.kernel_size) for c in (block.conv1, block.conv2, block.conv3)] == \
            [(8, 2, (1, 1)), (2, 2, (3, 3)), (2, 8, (1, 1))]
        # the paper's N(0, 0.01) for new layers, zero biases
        assert all(c.weight.abs().max() < 0.1 and c.weight.abs().sum() > 0 and not c.bias.any()
                   for c in (block.conv1, block.conv2, block.conv3))
    for block in blocks:  # move the blocks away from their near-identity start so the test sees them
        for conv in (block.conv1, block.conv2, block.conv3):
            torch.nn.init.normal_(conv.weight, std=0.5)
            torch.nn.init.normal_(conv.bias, std=0.5)
    x = torch.randn(2, 8, 5, 6)
    shared = F.relu(F.conv2d(x, head.reduce_conv.weight, head.reduce_conv.bias))
    for block in blocks:
        out = F.relu(F.conv2d(shared, block.conv1.weight, block.conv1.bias))
        out = F.relu(F.conv2d(out, block.conv2.weight, block.conv2.bias, padding=1))
        shared = F.relu(shared + F.conv2d(out, block.conv3.weight, block.conv3.bias))
    maps = head.forward_maps(x)
    torch.testing.assert_close(maps['global'], shared)
    torch.testing.assert_close(maps['local'], torch.cat([F.conv2d(shared, head.local_cls_conv.weight,
                                                                  head.local_cls_conv.bias),
                                                         F.conv2d(shared, head.local_reg_conv.weight,
                                                                  head.local_reg_conv.bias)], dim=1))


def test_global_branch_runs_in_onednn_at_inference_with_the_training_paths_outputs():
    """linear_relu: oneDNN's fused inner product under no_grad on the CPU, F.linear where autograd records."""
    from projects.acouplenet.coupled_bbox_head import _ONEDNN_LINEAR
    assert _ONEDNN_LINEAR  # the pinned torch ships the op; without it the CPU speed-up is off
    head = _head(normalization='none')
    local_bins, global_feats = torch.randn(5, 9, 3, 3), torch.randn(5, 12, 3, 3)

    def run():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            outputs = head(local_bins, global_feats)
        return outputs, {event.name for event in prof.events()}

    (cls_train, reg_train), ops_train = run()
    assert 'mkldnn::_linear_pointwise' not in ops_train
    (cls_train.sum() + reg_train.sum()).backward()
    assert head.global_conv.weight.grad is not None and head.global_conv.weight.grad.abs().sum() > 0
    with torch.no_grad():
        (cls_test, reg_test), ops_test = run()
    assert 'mkldnn::_linear_pointwise' in ops_test
    torch.testing.assert_close(cls_test, cls_train.detach())
    torch.testing.assert_close(reg_test, reg_train.detach())
    (lc, lr), (gc, gr) = _branch_outputs(head, local_bins, global_feats)  # the conv formulation
    torch.testing.assert_close(cls_test, lc + gc)
    torch.testing.assert_close(reg_test, lr + gr)
    with torch.no_grad():  # no RoIs
        cls_empty, reg_empty = head(torch.randn(0, 9, 3, 3), torch.randn(0, 12, 3, 3))
    assert cls_empty.shape == (0, 5) and reg_empty.shape == (0, 4)
    # Traced (FLOP counters, export), the products stay aten::linear, which counters count.
    with torch.no_grad():
        traced = torch.jit.trace(head, (local_bins, global_feats))
    assert 'aten::linear' in str(traced.inlined_graph) and '_linear_pointwise' not in str(traced.inlined_graph)
    torch.testing.assert_close(traced(local_bins, global_feats)[0], cls_test)


def test_global_convs_run_as_their_own_modules_for_hooks_and_flop_counters():
    """The k x k and 1x1 convs of the global branch run as modules (their forward is the matrix product),
    so forward hooks see them and mmengine's FLOP counter (mmdet's get_flops) counts each where it is."""
    from mmengine.analysis import FlopAnalyzer
    head = _head(normalization='none').eval()  # 12 = 2 x 6 pooled channels (proposal + context), k = 3
    local_bins, global_feats = torch.randn(5, 9, 3, 3), torch.randn(5, 12, 3, 3)
    seen = []
    for name in ('global_conv', 'global_fc'):
        getattr(head, name).register_forward_hook(lambda module, args, out, name=name: seen.append((name, out)))
    with torch.no_grad():
        head(local_bins, global_feats)
    assert [name for name, _ in seen] == ['global_conv', 'global_fc']
    global_conv_out = F.relu(F.conv2d(global_feats, head.global_conv.weight, head.global_conv.bias))
    torch.testing.assert_close(seen[0][1], global_conv_out.flatten(1))
    assert seen[1][1].shape == (5, 5)
    flops = FlopAnalyzer(head, (local_bins, global_feats)).unsupported_ops_warnings(False)
    flops = flops.uncalled_modules_warnings(False)
    assert {'global_conv', 'global_fc'}.isdisjoint(flops.uncalled_modules())
    by_module = flops.by_module()
    assert by_module['global_conv'] == 5 * 12 * 3 * 3 * 5  # RoIs x (C x k x k) x out multiply-adds
    assert by_module['global_fc'] == 5 * 5 * 5


def test_global_kxk_conv_reads_channels_last_features_and_weight_in_place():
    """The k x k conv's weight is channels-last and stays so through init and loading a checkpoint of
    either layout; features pooled channels-last go into the product without a copy (of either operand),
    and every layout of features and weight gives the conv's outputs."""
    from projects.acouplenet.coupled_bbox_head import kxk_operands
    head = _head(normalization='none')
    weight = head.global_conv.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    state = {k: v.contiguous() for k, v in head.state_dict().items()}  # a checkpoint in the default layout
    head.load_state_dict(state)
    assert head.global_conv.weight is weight and weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(weight, state['global_conv.weight'], rtol=0, atol=0)

    local_bins = torch.randn(5, 9, 3, 3)
    pooled = torch.randn(5, 3, 3, 12).permute(0, 3, 1, 2)  # (n, C, k, k), channels-last as the pooling writes it
    x, w = kxk_operands(pooled, weight)
    assert x.data_ptr() == pooled.data_ptr() and w.data_ptr() == weight.data_ptr()
    (lc, lr), (gc, gr) = _branch_outputs(head, local_bins, pooled)
    with torch.no_grad():
        for feats in (pooled, pooled.contiguous()):
            for layout in (torch.channels_last, torch.contiguous_format):
                head.global_conv.weight.data = weight.data.contiguous(memory_format=layout)
                cls_score, bbox_pred = head(local_bins, feats)
                torch.testing.assert_close(cls_score, lc + gc)
                torch.testing.assert_close(bbox_pred, lr + gr)
